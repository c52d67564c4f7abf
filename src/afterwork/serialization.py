"""How arguments and results cross the broker.

JSON (msgspec) is the default because a payload can then never run code when
it is read. Pickle carries any Python object but runs code on load, so it is
only used when the app asks for it by name.
"""

from __future__ import annotations

import pickle
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
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder()

    def dumps(self, value: Any) -> bytes:
        return self._encoder.encode(value)

    def loads(self, data: bytes) -> Any:
        return self._decoder.decode(data)


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
            f"{serializer.name} ({exc}). Pass plain data (str, int, float, bool, None, "
            "list, dict, datetime, UUID) such as an id instead of the object, "
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
