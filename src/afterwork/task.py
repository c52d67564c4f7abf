"""A task: a function registered with an app, with the options its jobs inherit.

Tasks are immutable; ``task.using(...)`` returns a copy with call options
changed (delay, priority, queue, unique key), in the manner of Django's tasks.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .defaults import MAX_PRIORITY, MIN_PRIORITY
from .errors import InvalidArguments, PayloadTooLarge, TaskConfigurationError
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


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    """What the worker will call: the function itself, not what a decorator wraps (a
    decorator that supplies an argument takes fewer than the function it wraps)."""
    try:
        return inspect.signature(func, follow_wrapped=False)
    except (TypeError, ValueError):  # some builtins have none: the call will tell
        return None


def _parameters(signature: inspect.Signature) -> str:
    """``(user_id, subject='hi')``: the names and defaults a caller must match."""
    empty = inspect.Parameter.empty
    bare = [p.replace(annotation=empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=bare, return_annotation=empty))


class Task(Generic[P, R]):
    """A registered function. Call it to run it here; ``enqueue`` it to run it on a worker."""

    def __init__(
        self,
        app: Afterwork,
        func: Callable[P, Any],
        *,
        name: str,
        queue: str,
        priority: int,
        retry: RetryPolicy,
        timeout: float | None,
        result_ttl: float,
    ) -> None:
        self.app = app
        self.func = func
        self.name = name
        self.queue = queue
        self.priority = priority
        self.retry = retry
        self.timeout = timeout
        self.result_ttl = result_ttl
        self.is_async = inspect.iscoroutinefunction(inspect.unwrap(func))
        self.run_at: float | None = None
        self.delay: float | None = None
        self.unique_key: str | None = None
        self._hints: TypeHints | None = None
        self._signature: inspect.Signature | None = _signature(func)
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue!r} priority={self.priority}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function here and now, as if it were not a task."""
        return self.func(*args, **kwargs)

    @property
    def hints(self) -> TypeHints:
        """The function's annotated types, resolved at first use (when the module that
        defines them has finished importing), to give decoded values their types back."""
        if self._hints is None:
            self._hints = TypeHints(self.func)
        return self._hints

    def using(
        self,
        *,
        delay: DurationLike | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        unique_key: str | None = None,
    ) -> Task[P, R]:
        """A copy whose next enqueues use these options; the task itself is unchanged.

        ``delay`` (``"10s"``, seconds, timedelta) and ``run_at`` (an aware
        datetime) are exclusive. While a job with ``unique_key`` is waiting or
        running, enqueueing the same key returns that job.
        """
        where = f"{self.name}.using()"
        clone = copy.copy(self)
        if delay is not None and run_at is not None:
            raise TaskConfigurationError(f"{where}: give delay or run_at, not both")
        if delay is not None:
            clone.delay, clone.run_at = parse_duration(delay, what=f"{where} delay"), None
        if run_at is not None:
            clone.run_at, clone.delay = to_timestamp(run_at, what=f"{where} run_at"), None
        if priority is not None:
            clone.priority = check_priority(priority, where)
        if queue is not None:
            clone.queue = check_queue(queue, where)
        if unique_key is not None:
            if not isinstance(unique_key, str) or not unique_key:
                raise TaskConfigurationError(f"{where}: unique_key must be a non-empty string")
            clone.unique_key = unique_key
        return clone

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
        if self._signature is None:
            return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(
                f"cannot enqueue {self.name}: {exc}; "
                f"it takes {self.name}{_parameters(self._signature)}"
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
