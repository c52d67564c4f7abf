"""How arguments and results cross the broker.

JSON (msgspec) is the default because a payload can then never run code when
it is read. Pickle carries any Python object but runs code on load, so it is
only used when the app asks for it by name.

JSON has no datetime, UUID, Decimal, tuple, set or path: they arrive as strings
and lists. :class:`TypeHints` turns them back into what the task's parameters (and
its return value) are annotated with.
"""

from __future__ import annotations

import inspect
import pickle
import reprlib
import typing
from collections.abc import Callable
from pathlib import PurePath
from typing import Any, Protocol

import msgspec

from .errors import ConfigurationError, SerializationError

Arguments = tuple[tuple[Any, ...], dict[str, Any]]


class Serializer(Protocol):
    """Turns values into bytes and back; implementations must be thread-safe."""

    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JSONSerializer:
    """msgspec JSON: fast, safe, and readable in the broker with any tool."""

    name = "json"

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder(enc_hook=_encode_other)
        self._decoder = msgspec.json.Decoder()

    def dumps(self, value: Any) -> bytes:
        return self._encoder.encode(value)

    def loads(self, data: bytes) -> Any:
        return self._decoder.decode(data)


def _encode_other(value: Any) -> Any:
    """Paths travel as their text (a ``Path`` parameter gets a ``Path`` back)."""
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not supported")


class PickleSerializer:
    """Any picklable object; only for brokers that nobody untrusted can write to."""

    name = "pickle"

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


def serializer_for(name_or_instance: str | Serializer) -> Serializer:
    if not isinstance(name_or_instance, str):
        return name_or_instance
    if name_or_instance == "json":
        return JSONSerializer()
    if name_or_instance == "pickle":
        return PickleSerializer()
    raise ConfigurationError(
        f"unknown serializer {name_or_instance!r}; use 'json' (the default) or 'pickle'"
    )


def encode_arguments(
    serializer: Serializer, task: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bytes:
    """Encode a call, naming the argument at fault if one cannot be carried."""
    try:
        return serializer.dumps([args, kwargs])
    except (TypeError, ValueError, pickle.PicklingError, AttributeError) as exc:
        culprit = _find_culprit(serializer, args, kwargs)
        raise SerializationError(
            f"cannot enqueue {task}: argument {culprit} cannot be encoded as "
            f"{serializer.name} ({exc}). Pass plain data such as an id instead of the object "
            "(str, int, float, bool, None, list, dict; datetime, date, UUID, Decimal, tuple, "
            "set and Path arrive as such when the task's parameter is annotated with that "
            "type), "
            "or configure Afterwork(serializer='pickle')"
        ) from exc


def _find_culprit(serializer: Serializer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    named = [(f"#{i} ({type(a).__name__})", a) for i, a in enumerate(args)]
    named += [(f"{k!r} ({type(v).__name__})", v) for k, v in kwargs.items()]
    for label, value in named:
        try:
            serializer.dumps(value)
        except Exception:
            return label
    return "list"


def decode_arguments(serializer: Serializer, payload: bytes) -> Arguments:
    """Decode a payload written by :func:`encode_arguments`; raise ``SerializationError``."""
    try:
        value = serializer.loads(payload)
    except Exception as exc:
        raise SerializationError(f"payload does not decode as {serializer.name}: {exc}") from exc
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not isinstance(value[0], list | tuple)
        or not isinstance(value[1], dict)
    ):
        raise SerializationError("payload is not an [args, kwargs] pair")
    return tuple(value[0]), value[1]


# -- types back from annotations ---------------------------------------------------------


def _convertible(hint: Any) -> bool:
    """Whether msgspec can build ``hint`` from decoded data (not Any, not an arbitrary class)."""
    try:
        info = msgspec.inspect.type_info(hint)
    except Exception:
        return False
    if isinstance(info, msgspec.inspect.CustomType):
        return isinstance(info.cls, type) and issubclass(info.cls, PurePath)
    return not isinstance(info, msgspec.inspect.AnyType)


def _decode_other(hint: Any, value: Any) -> Any:
    """Builds the types :func:`_encode_other` sent as text; ``object`` takes anything."""
    if hint is object:
        return value
    if isinstance(hint, type) and issubclass(hint, PurePath) and isinstance(value, str):
        return hint(value)
    raise TypeError(f"Expected `{type_name(hint)}`, got `{type(value).__name__}`")


def type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__qualname__
    return str(hint).replace("typing.", "")


class TypeHints:
    """A task function's annotated parameter and return types, resolved once.

    Decoded values are converted with ``msgspec.convert(..., strict=False)``:
    ``"2025-01-02T00:00:00Z"`` becomes a ``datetime`` for a ``datetime``
    parameter, a list a ``tuple[int, int]``. Parameters without an annotation, or
    annotated ``Any`` or with a class msgspec cannot build, are left as they are;
    so is everything when the annotations cannot be resolved.
    """

    def __init__(self, func: Callable[..., Any]) -> None:
        self.positional: list[tuple[str, Any]] = []
        self.var_positional: tuple[str, Any] | None = None
        self.keyword: dict[str, Any] = {}
        self.var_keyword: tuple[str, Any] | None = None
        self.returns: Any = None
        try:
            hints = typing.get_type_hints(func)
            # The parameters the worker calls: a decorator may take fewer than it wraps.
            parameters = inspect.signature(func, follow_wrapped=False).parameters.values()
        except Exception:  # unresolvable names, builtins without a signature: as they are
            self.active = False
            return
        wanted = {name: hint for name, hint in hints.items() if _convertible(hint)}
        kind = inspect.Parameter
        for parameter in parameters:
            entry = (parameter.name, wanted.get(parameter.name))
            if parameter.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD):
                self.positional.append(entry)
            if parameter.kind in (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY):
                self.keyword[parameter.name] = entry[1]
            elif parameter.kind == kind.VAR_POSITIONAL:
                self.var_positional = (f"*{parameter.name}", entry[1])
            elif parameter.kind == kind.VAR_KEYWORD:
                self.var_keyword = (f"**{parameter.name}", entry[1])
        self.returns = wanted.get("return")
        self.active = any(n != "return" for n in wanted)

    def arguments(self, task: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Arguments:
        """``args`` and ``kwargs`` as the annotated types; raise ``SerializationError``
        naming the parameter when a value cannot be one. Extra arguments are left
        for the call to refuse."""
        if not self.active:
            return args, kwargs
        converted = list(args)
        for i, value in enumerate(args):
            if i < len(self.positional):
                name, hint = self.positional[i]
            elif self.var_positional is not None:
                name, hint = self.var_positional
            else:
                break
            if hint is not None:
                converted[i] = _convert(task, name, value, hint)
        named = dict(kwargs)
        for key, value in kwargs.items():
            if key in self.keyword:
                name, hint = key, self.keyword[key]
            elif self.var_keyword is not None:
                name, hint = f"{self.var_keyword[0]}[{key!r}]", self.var_keyword[1]
            else:
                continue
            if hint is not None:
                named[key] = _convert(task, name, value, hint)
        return tuple(converted), named

    def result(self, value: Any) -> Any:
        """A decoded return value as the annotated return type, or as it is if it is not one."""
        if self.returns is None or value is None:
            return value
        try:
            return _convert("", "return", value, self.returns)
        except SerializationError:
            return value


def _convert(task: str, name: str, value: Any, hint: Any) -> Any:
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    try:
        return msgspec.convert(value, type=hint, strict=False, dec_hook=_decode_other)
    except (msgspec.ValidationError, TypeError, ValueError) as exc:
        raise SerializationError(
            f"cannot run {task}: argument {name!r} is {reprlib.repr(value)}, which is not "
            f"a valid {type_name(hint)} ({exc})"
        ) from exc
