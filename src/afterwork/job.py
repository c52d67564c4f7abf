"""The job record that crosses the broker, its states, and the handle users hold.

A job is stored as one :class:`JobRecord`; every broker keeps the same fields
so the worker, the CLI and the dashboard read them the same way.
"""

from __future__ import annotations

import enum
import os
import random
import time
import traceback
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from .errors import JobCancelled, JobFailed, JobNotFound, ResultTimeout

if TYPE_CHECKING:
    from .app import Afterwork

R = TypeVar("R")

#: Seeded from the OS, again in every forked child: ids need to be unique, not
#: secret, and a system call per id is half the cost of preparing a job.
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)


def new_job_id() -> str:
    """32 hex digits: microseconds since the epoch, then 72 random bits.

    Ids sort by creation time, so indexes on them grow at one end and a
    listing by id reads in enqueue order.
    """
    return f"{time.time_ns() // 1000:014x}{_random.getrandbits(72):018x}"


class JobStatus(enum.StrEnum):
    SCHEDULED = "scheduled"  # waiting for its run time
    QUEUED = "queued"  # ready to be claimed
    RUNNING = "running"  # claimed by a worker that holds its lease
    RETRYING = "retrying"  # failed an attempt, waiting out its backoff
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # retries spent; sits in the dead-letter queue
    CANCELLED = "cancelled"


WAITING = frozenset({JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.RETRYING})
ACTIVE = WAITING | {JobStatus.RUNNING}
FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class ErrorInfo(msgspec.Struct, frozen=True):
    """What a failed attempt raised, kept so the caller can see the remote error.

    ``since`` is when a job first met an error that keeps it waiting (no worker
    knows its task): the put-backs that follow keep that time, which bounds them.
    """

    type: str
    message: str
    traceback: str = ""
    since: float | None = None


def error_type(kind: type[BaseException]) -> str:
    """How an exception's type is recorded: ``ValueError`` for builtins, else its
    importable path (``afterwork.errors.JobTimeout``)."""
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def error_info(exc: BaseException) -> ErrorInfo:
    """What an exception becomes in a job: its recorded type, message and traceback."""
    kind = type(exc)
    name = error_type(kind)
    try:
        message = str(exc)
    except Exception:  # an exception whose __str__ fails must still be recorded
        message = f"<{kind.__qualname__} whose message cannot be shown>"
    try:
        text = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    except Exception:
        text = ""
    return ErrorInfo(name, message, text)


class JobRecord(msgspec.Struct, kw_only=True):
    """One job as the broker stores it. Times are seconds since the epoch."""

    id: str
    task: str
    queue: str
    priority: int
    payload: bytes
    status: JobStatus
    run_at: float
    enqueued_at: float
    max_attempts: int
    result_ttl: float
    timeout: float | None = None
    attempts: int = 0
    unique_key: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    lease_until: float | None = None
    cancel_requested: bool = False
    result: bytes | None = None
    error: ErrorInfo | None = None
    expires_at: float | None = None

    def status_at(self, now: float) -> JobStatus:
        """The status a user sees: a waiting job whose time has come is ``queued``."""
        if self.status in (JobStatus.SCHEDULED, JobStatus.RETRYING) and self.run_at <= now:
            return JobStatus.QUEUED
        return self.status


class JobHandle(Generic[R]):
    """A reference to an enqueued job: read its status, wait for its result, cancel it.

    Every method has an ``a``-prefixed twin for async code; the plain ones may
    be called from any thread that is not running an event loop.
    """

    __slots__ = ("_app", "id")

    def __init__(self, app: Afterwork, job_id: str) -> None:
        self._app = app
        self.id = job_id

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    async def ainfo(self) -> JobRecord:
        broker = await self._app.aconnect()
        record = await broker.get(self.id)
        if record is None:
            raise JobNotFound(f"no job with id {self.id} (it may have expired)")
        return record

    async def astatus(self) -> JobStatus:
        record = await self.ainfo()
        return record.status_at(self._app.clock.now())

    async def aresult(self, timeout: float | None = None) -> R:
        """Wait until the job finishes and return its value, or raise what it raised."""
        broker = await self._app.aconnect()
        record = await broker.wait(self.id, timeout)
        if record is None:
            raise JobNotFound(f"no job with id {self.id} (it may have expired)")
        if record.status == JobStatus.SUCCEEDED:
            value: Any = self._app.serializer.loads(record.result) if record.result else None
            task = self._app.tasks.get(record.task)
            # A task known here gets its return annotation's type back (a datetime, say).
            converted: R = task.hints.result(value) if task is not None else value
            return converted
        if record.status == JobStatus.FAILED:
            error = record.error or ErrorInfo("Unknown", "no error recorded")
            raise JobFailed(self.id, error.type, error.message, error.traceback)
        if record.status == JobStatus.CANCELLED:
            raise JobCancelled(f"job {self.id} was cancelled")
        raise ResultTimeout(f"job {self.id} is still {record.status} after {timeout}s")

    async def acancel(self) -> bool:
        """Cancel the job. True if it will not run (or is being stopped); False if already done.

        An id no broker knows raises :class:`JobNotFound`, so a typo is not taken for
        "already finished".
        """
        broker = await self._app.aconnect()
        if await broker.cancel(self.id):
            return True
        if await broker.get(self.id) is None:
            raise JobNotFound(f"no job with id {self.id} (it may have expired)")
        return False

    def info(self) -> JobRecord:
        return self._app.portal.call(self.ainfo())

    def status(self) -> JobStatus:
        return self._app.portal.call(self.astatus())

    def result(self, timeout: float | None = None) -> R:
        return self._app.portal.call(self.aresult(timeout))

    def cancel(self) -> bool:
        return self._app.portal.call(self.acancel())


def describe(record: JobRecord, now: float) -> dict[str, Any]:
    """A plain, JSON-ready view of a job for the CLI and the dashboard."""
    return {
        "id": record.id,
        "task": record.task,
        "queue": record.queue,
        "priority": record.priority,
        "status": str(record.status_at(now)),
        "attempts": record.attempts,
        "max_attempts": record.max_attempts,
        "enqueued_at": record.enqueued_at,
        "run_at": record.run_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "worker": record.worker,
        "unique_key": record.unique_key,
        "error": msgspec.to_builtins(record.error) if record.error else None,
    }
