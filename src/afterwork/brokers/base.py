"""The broker contract: what every engine must do, and the parts they all share.

Engines implement storage primitives; the rules (which job runs next, what a
settled outcome does to a job, when a lost lease returns a job) are written
down here and proven for every engine by ``tests/brokers``.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import Sequence
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from ..clock import Clock
from ..defaults import DEFAULT_DEAD_LETTER_TTL
from ..job import FINISHED, ErrorInfo, JobRecord, JobStatus
from .notify import Notifier


class OutcomeKind(enum.StrEnum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"  # run again at ``retry_at``
    FAILED = "failed"  # to the dead-letter queue
    CANCELLED = "cancelled"
    # Put back, the attempt not counted: untouched at a worker's shutdown; at ``retry_at``
    # with ``error`` as the reason when the worker does not know the job's task.
    REQUEUE = "requeue"


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """How one attempt ended, reported by the worker that holds the job's lease."""

    job_id: str
    worker: str
    kind: OutcomeKind
    result: bytes | None = None
    error: ErrorInfo | None = None
    retry_at: float | None = None


class WorkerInfo(msgspec.Struct, kw_only=True):
    """A live worker as the broker last heard of it."""

    id: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: float
    last_seen: float
    running: int = 0
    processed: int = 0
    failed: int = 0


class ScheduleState(msgspec.Struct, kw_only=True):
    """The last fire of a periodic task, as every scheduler sees it."""

    name: str
    last_fire: float
    last_job: str | None = None


QueueStats = dict[str, dict[str, int]]
"""Per queue, the number of jobs in each status (as :meth:`JobRecord.status_at` sees it)."""


def redact(url: str) -> str:
    """The URL with its password replaced, safe to print and log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class Broker(abc.ABC):
    """Stores jobs and hands them to workers; every method is async and batch-first.

    Delivery is at least once: a claimed job belongs to one worker while its
    lease lives, and returns to its queue when the lease runs out.
    Implementations must be usable from any event loop and any thread.
    """

    #: Whether enqueued jobs survive the process (false only for ``memory://``).
    durable: bool = True
    #: Where a unique key is unique: across the whole broker, or per queue (Redis,
    #: where a queue lives in one cluster slot and a key check cannot span them).
    unique_scope: Literal["broker", "queue"] = "broker"

    def __init__(
        self, url: str, *, clock: Clock, dead_letter_ttl: float = DEFAULT_DEAD_LETTER_TTL
    ) -> None:
        self.url = url
        self.clock = clock
        self.dead_letter_ttl = dead_letter_ttl
        #: Pulsed when a job becomes ready; :meth:`reserve` waits on it.
        self.ready_signal = Notifier()
        #: Pulsed when a job finishes; :meth:`wait` waits on it.
        self.settled_signal = Notifier()

    def describe(self) -> str:
        """Which engine holds the jobs, and where, without a password: the first thing
        the CLI says, so a worker started in the wrong place is noticed at once."""
        return redact(self.url)

    def exists(self) -> bool:
        """Whether the store is there to read; commands that only look (``status``,
        ``jobs``) say so instead of creating an empty one."""
        return True

    def wake(self) -> None:
        """Make ``reserve`` calls blocked in this process return now, empty if nothing is
        ready; a stopping worker calls it so it does not wait out its block time."""
        self.ready_signal.notify()

    async def connect(self) -> None:
        """Open connections and create what the engine needs; raise BrokerConnectionError."""

    async def close(self) -> None:
        """Release connections; the broker may be connected again later."""

    # -- the write side, used by producers and workers --------------------------------

    @abc.abstractmethod
    async def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        """Store jobs in one round trip, returning what was stored for each.

        A job whose ``unique_key`` matches an active job (scheduled, queued,
        retrying or running) is not stored; the active job is returned instead.
        """

    @abc.abstractmethod
    async def reserve(
        self, queues: Sequence[str], limit: int, *, worker: str, lease: float, block: float = 0
    ) -> list[JobRecord]:
        """Claim up to ``limit`` ready jobs, leased to ``worker`` for ``lease`` seconds.

        Queues are served in the order given, then by priority (high first),
        then by run time and enqueue order. Claiming counts the attempt. With
        ``block`` > 0 and nothing ready, wait up to that long for work; it may
        return empty sooner (on :meth:`wake`, say), and the caller asks again.
        """

    @abc.abstractmethod
    async def extend(self, worker: str, job_ids: Sequence[str], lease: float) -> list[str]:
        """Renew the leases ``worker`` holds; return the ids it must stop running.

        Those are jobs whose cancel was requested or whose lease was lost.
        """

    @abc.abstractmethod
    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Apply outcomes in one round trip. An outcome from a worker that no
        longer holds the job's lease is ignored, so a stale worker cannot
        overwrite the attempt that replaced it. A retry or requeue of a job whose
        cancel was requested cancels it instead: a cancelled job never runs again."""

    @abc.abstractmethod
    async def recover(self) -> int:
        """Return jobs with expired leases to their queue (or, with no attempts
        left, to the dead-letter queue) and drop expired results. Returns the
        number of jobs recovered."""

    async def claim_fire(self, schedule: str, fire_at: float, job: JobRecord | None) -> bool:
        """Record that ``schedule`` fired at ``fire_at`` and enqueue ``job`` with it, in one
        atomic step, unless a fire at or after ``fire_at`` is already recorded.

        However many schedulers race for a fire, one call wins (True) and its job
        is the only one. ``job=None`` records a skipped fire (the previous run was
        still going) and keeps the previous job as the schedule's last.
        """
        raise NotImplementedError(f"{type(self).__name__} does not run periodic tasks yet")

    async def schedule_states(self) -> dict[str, ScheduleState]:
        """The last fire of every schedule, by name."""
        raise NotImplementedError(f"{type(self).__name__} does not run periodic tasks yet")

    # -- the read side, used by handles, the CLI and the dashboard ---------------------

    @abc.abstractmethod
    async def get(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    async def ids_starting_with(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` ids of jobs that start with ``prefix``, so a person can give
        the first digits of an id; the CLI asks for two to tell one from many."""

    @abc.abstractmethod
    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        queue: str | None = None,
        limit: int = 50,
    ) -> list[JobRecord]:
        """Jobs waiting are listed in the order they will run; others newest first."""

    @abc.abstractmethod
    async def stats(self) -> QueueStats: ...

    @abc.abstractmethod
    async def register_worker(self, info: WorkerInfo) -> None:
        """Record or refresh a worker's heartbeat."""

    @abc.abstractmethod
    async def unregister_worker(self, worker_id: str) -> None: ...

    @abc.abstractmethod
    async def workers(self, alive_within: float) -> list[WorkerInfo]: ...

    @abc.abstractmethod
    async def retry_failed(self, job_ids: Sequence[str] | None = None) -> int:
        """Queue dead-letter jobs again with fresh attempts (all of them for ``None``)."""

    @abc.abstractmethod
    async def purge(self, job_ids: Sequence[str] | None = None) -> int:
        """Delete dead-letter jobs (all of them for ``None``)."""

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> bool:
        """Cancel a waiting job at once, or ask the running job's worker to stop it.

        Returns False if the job has already finished or does not exist.
        """

    async def wait(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """Wait until the job has finished; return it as it then is (or last seen).

        Engines with a cross-process notification override ``_poll_interval``.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            generation = self.settled_signal.generation
            record = await self.get(job_id)
            if record is None or record.status in FINISHED:
                return record
            remaining = self._poll_interval()
            if deadline is not None:
                remaining = min(remaining, deadline - loop.time())
                if remaining <= 0:
                    return record
            await self.settled_signal.wait(generation, remaining)

    def _poll_interval(self) -> float:
        """How long :meth:`wait` trusts the in-process signal before reading again."""
        return 1.0
