"""A task: a function registered with an app, with the options its jobs inherit.

Tasks are immutable, in the manner of Django's tasks: a frozen dataclass that
checks its options when it is built, and ``task.using(...)`` returns a new one
with call options changed (delay, priority, queue, unique key), checked the
same way.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field, replace
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .defaults import (
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    DEFAULT_RESULT_TTL,
    MAX_PRIORITY,
    MIN_PRIORITY,
)
from .errors import (
    ConfigurationError,
    InvalidArguments,
    PayloadTooLarge,
    TaskConfigurationError,
)
from .job import JobHandle, JobRecord, JobStatus, new_job_id
from .retry import RetryPolicy
from .schedule import DurationLike, parse_duration, to_timestamp
from .serialization import TypeHints, encode_arguments

if TYPE_CHECKING:
    from .app import Afterwork

P = ParamSpec("P")
R = TypeVar("R")

TASK_OPTIONS = ("name", "queue", "priority", "retries", "timeout", "result_ttl")


def module_name(func: Callable[..., Any]) -> str:
    """The module a worker would import ``func`` from."""
    return importable_module(getattr(func, "__module__", None) or "")


def importable_module(module: str) -> str:
    """``__main__`` is named by its file (or ``-m`` module), as a worker would import it."""
    if module != "__main__":
        return module
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return str(spec.name)
    return Path(getattr(main, "__file__", "__main__")).stem


def check_importable(func: Callable[..., Any], what: str) -> None:
    """Refuse what a worker could not find by name: lambdas, nested functions, bound methods."""
    if not callable(func):
        raise TaskConfigurationError(f"{what} must be a function; got {func!r}")
    qualname = getattr(func, "__qualname__", "")
    if getattr(func, "__name__", "") == "<lambda>":
        raise TaskConfigurationError(
            f"{what} is a lambda, which a worker in another process cannot find by name; "
            "define it with def at module level"
        )
    if "<locals>" in qualname:
        raise TaskConfigurationError(
            f"{what} ({qualname}) is defined inside another function, so a worker cannot "
            "import it; move it to module level"
        )
    if not inspect.isfunction(func) and not inspect.isbuiltin(func):
        raise TaskConfigurationError(
            f"{what} must be a module-level function; got {type(func).__name__} {func!r}"
        )


def check_priority(value: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskConfigurationError(f"{where}: priority must be an int; got {value!r}")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise TaskConfigurationError(
            f"{where}: priority {value} is out of range; use {MIN_PRIORITY}..{MAX_PRIORITY} "
            "(higher runs first)"
        )
    return value


def check_queue(value: str, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 200 or "," in value:
        raise TaskConfigurationError(
            f"{where}: queue must be a non-empty name without commas; got {value!r}"
        )
    return value


def _check_seconds(value: float, option: str, where: str, *, more_than_zero: bool = False) -> None:
    """A duration already in seconds (what the decorator and ``using`` parse to)."""
    number = not isinstance(value, bool) and isinstance(value, int | float)
    if not number or not math.isfinite(value) or value < 0:
        raise TaskConfigurationError(
            f"{where}: {option} must be zero or more seconds; got {value!r}"
        )
    if more_than_zero and value == 0:
        raise TaskConfigurationError(
            f"{where}: {option} must be more than 0 seconds; got {value:g}s"
        )


def reject_unknown(options: Mapping[str, Any], where: str) -> None:
    for option in options:
        close = difflib.get_close_matches(option, TASK_OPTIONS, n=1)
        hint = (
            f"did you mean {close[0]!r}?" if close else f"known options: {', '.join(TASK_OPTIONS)}"
        )
        raise TaskConfigurationError(f"{where}: unknown option {option!r}; {hint}")


def retry_policy(retries: int | RetryPolicy | None, where: str) -> RetryPolicy:
    if retries is None:
        return RetryPolicy()
    if isinstance(retries, RetryPolicy):
        return retries
    try:
        return RetryPolicy.retries(retries)
    except ValueError as exc:
        raise TaskConfigurationError(f"{where}: {exc}") from None


@dataclass(frozen=True, slots=True)
class _CallShape:
    """What calls a function accepts. Positional calls to a function of plain parameters
    (the usual task) are checked by counting; others bind to its signature."""

    signature: inspect.Signature | None
    least: int = -1
    most: int = -1

    def accepts(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise ``TypeError`` as the call would, for a call the function refuses."""
        if not kwargs and self.least <= len(args) <= self.most:
            return
        if self.signature is not None:
            self.signature.bind(*args, **kwargs)


@functools.cache
def _call_shape(func: Callable[..., Any]) -> _CallShape:
    """Of what the worker will call: the function itself, not what a decorator wraps (a
    decorator that supplies an argument takes fewer than the function it wraps). Once per
    function: ``using`` builds tasks often."""
    try:
        signature = inspect.signature(func, follow_wrapped=False)
    except (TypeError, ValueError):  # some builtins have none: the call will tell
        return _CallShape(None, 0, sys.maxsize)
    parameters = signature.parameters.values()
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters):
        return _CallShape(signature)
    required = sum(p.default is inspect.Parameter.empty for p in parameters)
    return _CallShape(signature, required, len(parameters))


def _parameters(signature: inspect.Signature) -> str:
    """``(user_id, subject='hi')``: the names and defaults a caller must match."""
    empty = inspect.Parameter.empty
    bare = [p.replace(annotation=empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=bare, return_annotation=empty))


@dataclass(frozen=True, eq=False, repr=False)
class Task(Generic[P, R]):
    """A registered function. Call it to run it here; ``enqueue`` it to run it on a worker.

    A task is immutable: every option is checked when it is built (by the
    decorator, or by :meth:`using`, which builds a new one), so a task that
    exists is one its jobs can honour. ``delay``, ``run_at`` and ``unique_key``
    are set by :meth:`using` only; ``run_at`` is in seconds since the epoch.
    """

    app: Afterwork
    func: Callable[P, Any]
    _: KW_ONLY
    name: str
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    result_ttl: float = DEFAULT_RESULT_TTL
    delay: float | None = None
    run_at: float | None = None
    unique_key: str | None = None
    is_async: bool = field(init=False)
    _shape: _CallShape = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TaskConfigurationError(
                f"a task's name must be a non-empty string; got {self.name!r}"
            )
        where = f"task {self.name}"
        check_queue(self.queue, where)
        check_priority(self.priority, where)
        if not isinstance(self.retry, RetryPolicy):
            raise TaskConfigurationError(
                f"{where}: retry must be a RetryPolicy; got {self.retry!r}"
            )
        if self.timeout is not None:
            _check_seconds(self.timeout, "timeout", where, more_than_zero=True)
        _check_seconds(self.result_ttl, "result_ttl", where)
        if self.delay is not None:
            _check_seconds(self.delay, "delay", where)
        if self.run_at is not None:
            if self.delay is not None:
                raise TaskConfigurationError(f"{where}: give delay or run_at, not both")
            if isinstance(self.run_at, bool) or not isinstance(self.run_at, int | float):
                raise TaskConfigurationError(
                    f"{where}: run_at must be seconds since the epoch; got {self.run_at!r}"
                )
        if self.unique_key is not None and (
            not isinstance(self.unique_key, str) or not self.unique_key
        ):
            raise TaskConfigurationError(f"{where}: unique_key must be a non-empty string")
        # Frozen: what follows from the function is set once, here.
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(inspect.unwrap(self.func)))
        object.__setattr__(self, "_shape", _call_shape(self.func))
        object.__setattr__(self, "__doc__", self.func.__doc__)
        object.__setattr__(self, "__wrapped__", self.func)

    @classmethod
    def define(
        cls,
        app: Afterwork,
        func: Callable[..., Any],
        *,
        name: str,
        queue: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        retries: int | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        result_ttl: DurationLike | None = None,
    ) -> Task[Any, Any]:
        """A task from options as ``@jobs.task(...)`` takes them: ``retries`` as a count
        or a policy, durations in any form (``"30s"``, seconds, timedelta), and
        ``result_ttl`` the app's unless given."""
        where = f"task {name}"
        try:
            seconds = None if timeout is None else parse_duration(timeout, what="timeout")
            ttl = (
                app.result_ttl
                if result_ttl is None
                else parse_duration(result_ttl, what="result_ttl")
            )
        except ConfigurationError as exc:
            raise TaskConfigurationError(f"{where}: {exc}") from None
        return cls(
            app,
            func,
            name=name,
            queue=queue,
            priority=priority,
            retry=retry_policy(retries, where),
            timeout=seconds,
            result_ttl=ttl,
        )

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue!r} priority={self.priority}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function here and now, as if it were not a task."""
        return self.func(*args, **kwargs)

    @cached_property
    def hints(self) -> TypeHints:
        """The function's annotated types, resolved at first use (when the module that
        defines them has finished importing), to give decoded values their types back."""
        return TypeHints(self.func)

    def using(
        self,
        *,
        delay: DurationLike | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        unique_key: str | None = None,
    ) -> Task[P, R]:
        """A new task whose enqueues use these options; this one is unchanged.

        ``delay`` (``"10s"``, seconds, timedelta) and ``run_at`` (an aware
        datetime) are exclusive, and each replaces the other if set before.
        While a job with ``unique_key`` is waiting or running, enqueueing the
        same key returns that job. The new task is checked as the decorator
        checks a task.
        """
        where = f"{self.name}.using()"
        if delay is not None and run_at is not None:
            raise TaskConfigurationError(f"{where}: give delay or run_at, not both")
        changes: dict[str, Any] = {}
        if delay is not None:
            changes.update(delay=parse_duration(delay, what=f"{where} delay"), run_at=None)
        if run_at is not None:
            changes.update(run_at=to_timestamp(run_at, what=f"{where} run_at"), delay=None)
        if priority is not None:
            changes["priority"] = priority
        if queue is not None:
            changes["queue"] = queue
        if unique_key is not None:
            changes["unique_key"] = unique_key
        return replace(self, **changes)

    def prepare(self, *args: P.args, **kwargs: P.kwargs) -> JobRecord:
        """Build the job without sending it: for :meth:`Afterwork.enqueue_many`.

        Arguments are encoded here, so what cannot cross the broker fails now.
        """
        self._check_arguments(args, kwargs)
        app = self.app
        payload = encode_arguments(app.serializer, self.name, args, kwargs)
        if len(payload) > app.max_payload_size:
            raise PayloadTooLarge(
                f"cannot enqueue {self.name}: its arguments encode to {len(payload)} bytes, over "
                f"the limit of {app.max_payload_size}; store large data elsewhere and pass a "
                "reference, or raise Afterwork(max_payload_size=...)"
            )
        return self._record(payload)

    def _check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Refuse a call the function would refuse, before it is stored: a worker
        would only fail it on every attempt."""
        try:
            self._shape.accepts(args, kwargs)
        except TypeError as exc:
            assert self._shape.signature is not None  # only a signature refuses
            raise InvalidArguments(
                f"cannot enqueue {self.name}: {exc}; "
                f"it takes {self.name}{_parameters(self._shape.signature)}"
            ) from None

    def _record(self, payload: bytes) -> JobRecord:
        now = self.app.clock.now()
        run_at = self.run_at if self.run_at is not None else now + (self.delay or 0.0)
        return JobRecord(
            id=new_job_id(),
            task=self.name,
            queue=self.queue,
            priority=self.priority,
            payload=payload,
            status=JobStatus.SCHEDULED if run_at > now else JobStatus.QUEUED,
            run_at=run_at,
            enqueued_at=now,
            max_attempts=self.retry.max_attempts,
            result_ttl=self.result_ttl,
            timeout=self.timeout,
            unique_key=self.unique_key,
        )

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Send a job to the broker from sync code; returns its handle."""
        record = self.prepare(*args, **kwargs)
        [stored] = self.app.portal.call(self.app.asubmit([record]))
        return JobHandle(self.app, stored.id)

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Send a job to the broker from async code; returns its handle."""
        record = self.prepare(*args, **kwargs)
        [stored] = await self.app.asubmit([record])
        return JobHandle(self.app, stored.id)
