"""The worker: claim jobs, run them within limits, settle outcomes, stop gracefully.

Four loops share one event loop: claiming (blocks on the broker while idle),
the jobs themselves (async on the loop, sync in a thread pool), settling
(outcomes batched while a write is in flight) and the heartbeat (renews
leases, hears about cancels, announces the worker, puts lost jobs back).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .brokers import Broker, Outcome, OutcomeKind, WorkerInfo
from .defaults import DEFAULT_HEARTBEAT, DEFAULT_MAINTENANCE_INTERVAL, UNKNOWN_TASK_RECHECK
from .errors import JobTimeout, SerializationError, UnknownTask
from .job import ErrorInfo, JobRecord, error_info, error_type
from .retry import Retry
from .scheduler import Scheduler
from .serialization import decode_arguments
from .settling import OutcomeWriter
from .threads import DaemonThreadPool
from .workeroptions import WorkerOptions

if TYPE_CHECKING:
    from .app import Afterwork
    from .task import Task

logger = logging.getLogger("afterwork.worker")

#: The closing line's words for how an attempt ended.
_TALLY = {
    OutcomeKind.SUCCEEDED: "succeeded",
    OutcomeKind.RETRY: "failed and will be retried",
    OutcomeKind.FAILED: "failed for good",
    OutcomeKind.CANCELLED: "cancelled",
    OutcomeKind.REQUEUE: "put back",
}
_UNKNOWN_TASK_TALLY = "left for a worker that knows their task"

# Why a running job's asyncio task was cancelled, which decides its outcome.
_CANCELLED = "cancelled"
_SHUTDOWN = "shutdown"


class Worker:
    """Runs jobs from ``queues`` (served in that order), at most ``concurrency`` at a time.

    The options are :class:`~afterwork.workeroptions.WorkerOptions`, given as
    keyword arguments (``Worker(app, concurrency=20)``) or whole, and checked
    here. ``burst`` exits once nothing is ready or running. ``lease`` is how
    long a claimed job stays this worker's without renewal: a killed worker's
    jobs run elsewhere that soon after. ``heartbeat`` defaults to a third of the
    lease (at most 1s) and ``maintenance_interval`` to the lease (at most 5s),
    so a short lease is renewed in time and expired ones are noticed promptly.
    """

    def __init__(
        self, app: Afterwork, options: WorkerOptions | None = None, **changes: Any
    ) -> None:
        options = WorkerOptions.of(changes, options)
        self.options = options
        self.app = app
        self.queues = list(options.queues)
        self.concurrency = options.concurrency
        self.burst = options.burst
        self.lease = options.lease
        self.heartbeat = (
            min(DEFAULT_HEARTBEAT, options.lease / 3)
            if options.heartbeat is None
            else options.heartbeat
        )
        self.grace_period = options.grace_period
        self.maintenance_interval = (
            min(DEFAULT_MAINTENANCE_INTERVAL, options.lease)
            if options.maintenance_interval is None
            else options.maintenance_interval
        )
        self.block = options.block
        #: How long a job naming a task this worker does not know is put back for
        #: another worker before it is dead-lettered.
        self.unknown_task_wait = options.unknown_task_wait
        #: Fires the app's periodic tasks from this worker (one run per fire
        #: however many workers do); off with ``scheduler=False``.
        self.scheduler = Scheduler(app) if options.scheduler and app.schedules else None
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        #: How the attempts this worker made ended, in the words of its closing line.
        self.tally: collections.Counter[str] = collections.Counter()
        self._unknown_tasks_seen: set[str] = set()
        self.abandoned_threads = 0
        self.started_at = 0.0
        self._running: dict[str, tuple[JobRecord, asyncio.Task[None]]] = {}
        self._cancel_reason: dict[str, str] = {}
        self._writer = OutcomeWriter(self.id)
        self._threads = DaemonThreadPool(options.concurrency, "afterwork-job")
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._stop_now = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle --------------------------------------------------------------------

    def stop(self, *, immediately: bool = False) -> None:
        """Stop claiming; running jobs get the grace period unless ``immediately``.

        Safe to call from any thread (and from signal handlers).
        """
        loop = self._loop
        if loop is None or loop.is_closed():  # not started yet, or already finished
            # Not running yet: nothing waits on the events, so set them here and
            # run() returns as soon as it starts.
            self._request_stop(immediately)
            return
        loop.call_soon_threadsafe(self._request_stop, immediately)

    def _request_stop(self, immediately: bool) -> None:
        if immediately or self._stop.is_set():
            self._stop_now.set()
        self._stop.set()
        self._slot_freed.set()
        self.app.broker.wake()

    async def wait_started(self) -> None:
        """Return once :meth:`run` has connected and is about to claim jobs."""
        await self._started.wait()

    @property
    def running(self) -> int:
        return len(self._running)

    async def run(self) -> None:
        """Work until :meth:`stop` (or, in burst mode, until nothing is left to do)."""
        self._loop = asyncio.get_running_loop()
        broker = await self.app.aconnect()
        self.started_at = self.app.clock.now()
        await broker.register_worker(self.info())
        await broker.recover()
        self.app.hooks.emit("on_worker_start", self)
        self._started.set()
        logger.info(
            "worker %s started: queues %s, concurrency %d",
            self.id,
            ",".join(self.queues),
            self.concurrency,
            extra={"worker": self.id, "queues": self.queues},
        )
        self._warn_of_unserved_tasks()
        settler = asyncio.create_task(self._writer.run(broker))
        heart = asyncio.create_task(self._heartbeat_loop(broker))
        schedules = asyncio.create_task(self.scheduler.run()) if self.scheduler else None
        try:
            await self._claim_loop(broker)
        finally:
            await self._drain()
            heart.cancel()
            if self.scheduler is not None and schedules is not None:
                self.scheduler.stop()
                await schedules
            settler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(heart, settler, return_exceptions=True)
            await self._writer.flush(broker)
            await broker.unregister_worker(self.id)
            self._threads.shutdown(wait=False, cancel_futures=True)
            self.app.hooks.emit("on_worker_stop", self)
            logger.info(
                "worker %s stopped: %s",
                self.id,
                self._summary(),
                extra={"worker": self.id, "tally": dict(self.tally)},
            )

    @property
    def processed(self) -> int:
        """Attempts that succeeded."""
        return self.tally[_TALLY[OutcomeKind.SUCCEEDED]]

    @property
    def failed(self) -> int:
        """Jobs this worker sent to the dead-letter queue."""
        return self.tally[_TALLY[OutcomeKind.FAILED]]

    def _summary(self) -> str:
        """Attempts by how they ended: a job that failed and will run again is neither
        a success nor a failure, and one put back was not run here at all."""
        total = sum(self.tally.values())
        if not total:
            return "it ran no jobs"
        order = [*_TALLY.values(), _UNKNOWN_TASK_TALLY]
        ends = ", ".join(f"{self.tally[how]} {how}" for how in order if self.tally[how])
        return f"{total} attempt{'' if total == 1 else 's'}: {ends}"

    def _warn_of_unserved_tasks(self) -> None:
        """Tasks whose queue this worker does not serve wait for another worker; say so,
        since a job that never runs is otherwise silent."""
        unserved: dict[str, list[str]] = {}
        for task in self.app.tasks.values():
            if task.queue not in self.queues:
                unserved.setdefault(task.queue, []).append(task.name)
        for queue, names in unserved.items():
            logger.warning(
                "queue %r is not served by this worker, so jobs of %s wait for a worker "
                "that serves it (--queues %s)",
                queue,
                ", ".join(sorted(names)),
                ",".join([*self.queues, queue]),
                extra={"worker": self.id, "queue": queue},
            )

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.concurrency,
            started_at=self.started_at,
            last_seen=self.app.clock.now(),
            running=len(self._running),
            processed=self.processed,
            failed=self.failed,
        )

    # -- claiming ---------------------------------------------------------------------

    async def _claim_loop(self, broker: Broker) -> None:
        delay = 0.1
        while not self._stop.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            settled_before = self._writer.batches
            try:
                jobs = await broker.reserve(
                    self.queues,
                    free,
                    worker=self.id,
                    lease=self.lease,
                    block=0 if self.burst else self.block,
                )
            except Exception as exc:
                # The broker is unreachable (a restart, a network blip): running jobs
                # go on, and claiming resumes once it answers again.
                logger.warning(
                    "could not claim jobs (%s: %s); retrying in %.1fs",
                    type(exc).__name__,
                    exc,
                    delay,
                    extra={"worker": self.id, "error_type": type(exc).__name__},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            if self._stop.is_set():
                self._put_back(jobs)
                return
            for job in jobs:
                if job.id in self._running:
                    # Our own lease ran out (a stalled loop) and we claimed the job
                    # again: the run in progress carries on under the new lease.
                    continue
                task = asyncio.create_task(self._execute(job))
                self._running[job.id] = (job, task)
            if jobs:
                # Let the jobs start before this loop spends its time on the next claim
                # (packing and sending it): a job waits for no round trip but its own.
                # Jobs that finish at once report here too, and this loop resumes before
                # the settle loop wakes: the next claim reaches the broker ahead of their
                # settle, so the worker runs that batch while Redis settles the last one.
                await asyncio.sleep(0)
            if not jobs and self.burst:
                if not self._running:
                    # A retry or put-back settled since the reserve may be ready now.
                    await self._writer.flush(broker)
                    if self._writer.batches == settled_before:
                        return
                    continue
                self._slot_freed.clear()
                await self._slot_freed.wait()

    def _put_back(self, jobs: Sequence[JobRecord]) -> None:
        for job in jobs:
            self._report(job, OutcomeKind.REQUEUE)

    # -- running one job ----------------------------------------------------------------

    async def _execute(self, job: JobRecord) -> None:
        try:
            await self._attempt(job)
        except Exception as exc:
            # Whatever fails around the task (a hook, resolving it, computing a
            # retry) settles the job here; unsettled, it would be blamed on a crash.
            logger.exception("afterwork failed handling job %s", job.id, extra={"job_id": job.id})
            self._dead_letter(job, error_info(exc))
        finally:
            del self._running[job.id]
            self._cancel_reason.pop(job.id, None)
            self._slot_freed.set()

    async def _attempt(self, job: JobRecord) -> None:
        try:
            task = self.app.resolve_task(job.task)
            args, kwargs = decode_arguments(self.app.serializer, job.payload)
            args, kwargs = task.hints.arguments(task.name, args, kwargs)
        except UnknownTask as exc:
            self._unknown_task(job, exc)
            return
        except SerializationError as exc:
            self._dead_letter(job, error_info(exc))
            return
        hooks = self.app.hooks
        hooks.emit("before_run", self, job)
        try:
            result = await self._call(task, job, args, kwargs)
        except asyncio.CancelledError:
            reason = self._cancel_reason.get(job.id, _SHUTDOWN)
            # Hooks tell a stop from a success: "cancelled" or "shutdown" (put back).
            hooks.emit("after_run", self, job, None, asyncio.CancelledError(reason))
            self._report(
                job, OutcomeKind.CANCELLED if reason == _CANCELLED else OutcomeKind.REQUEUE
            )
            return
        except (Exception, SystemExit) as exc:
            # sys.exit() in a task fails that job; it must not stop the worker.
            hooks.emit("after_run", self, job, None, exc)
            self._failed_attempt(task, job, exc)
            return
        hooks.emit("after_run", self, job, result, None)
        try:
            payload = self.app.serializer.dumps(result) if result is not None else None
        except Exception as exc:
            # Running the task again would return the same value, and repeat its effects.
            error = SerializationError(
                f"{task.name} returned a value of type {type(result).__name__}, which cannot "
                f"be stored as {self.app.serializer.name} ({exc}); return plain data such as an id"
            )
            error.__cause__ = exc
            self._dead_letter(job, error_info(error))
            return
        self._report(job, OutcomeKind.SUCCEEDED, result=payload)

    async def _call(
        self, task: Task[Any, Any], job: JobRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run the function: async on this loop, sync in the thread pool."""
        timeout = job.timeout
        if task.is_async:
            if timeout is None:
                return await task.func(*args, **kwargs)
            limit = asyncio.timeout(timeout)
            try:
                async with limit:
                    return await task.func(*args, **kwargs)
            except TimeoutError as exc:
                # Only the limit expiring is a JobTimeout; the task's own
                # TimeoutError (an HTTP client's, say) is reported as itself.
                if limit.expired() and self._cancel_reason.get(job.id) is None:
                    raise JobTimeout(
                        f"{task.name} ran longer than its timeout of {timeout}s"
                    ) from exc
                raise
        # In the job's context, so what a before_run hook set (a request id, a trace
        # span) is there in the thread, as it is for async tasks.
        context = contextvars.copy_context()
        thread = self._threads.submit(context.run, task.func, *args, **kwargs)
        future = asyncio.wrap_future(thread)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.CancelledError:
            if not thread.done():
                # Stopped (shutdown, cancel) while its thread runs on: it cannot be
                # joined, so the process must not wait for it at exit.
                self._abandon_thread()
            raise
        except TimeoutError:
            if not future.cancelled():
                raise  # the function's own TimeoutError: it returned, nothing is abandoned
            self._abandon_thread()
            logger.warning(
                "%s (job %s) passed its timeout of %ss; a thread cannot be stopped, so it is "
                "abandoned and keeps running in the background",
                task.name,
                job.id,
                timeout,
                extra={"task": task.name, "job_id": job.id},
            )
            raise JobTimeout(f"{task.name} ran longer than its timeout of {timeout}s") from None

    def _abandon_thread(self) -> None:
        """Leave a job's thread running; later jobs get a new pool so none waits behind it."""
        self.abandoned_threads += 1
        self._threads.shutdown(wait=False)
        self._threads = DaemonThreadPool(self.concurrency, "afterwork-job")

    def _failed_attempt(self, task: Task[Any, Any], job: JobRecord, exc: BaseException) -> None:
        error = error_info(exc)
        if job.attempts >= job.max_attempts:
            self._dead_letter(job, error)
            return
        delay = exc.delay if isinstance(exc, Retry) and exc.delay is not None else None
        if delay is None:
            delay = task.retry.delay(job.attempts)
        logger.warning(
            "%s (job %s) failed attempt %d of %d with %s: %s; retrying in %.1fs",
            job.task,
            job.id,
            job.attempts,
            job.max_attempts,
            error.type,
            error.message,
            delay,
            extra=self._log_fields(job, error),
        )
        self.app.hooks.emit("on_retry", self, job, error, delay)
        self._report(job, OutcomeKind.RETRY, error=error, retry_at=self.app.clock.now() + delay)

    def _unknown_task(self, job: JobRecord, exc: UnknownTask) -> None:
        """Put the job back for a worker that knows its task (during a rolling deploy an
        old worker meets a new task), until it has waited ``unknown_task_wait``."""
        now = self.app.clock.now()
        kind = error_type(type(exc))
        previous = job.error
        since = previous.since if previous and previous.type == kind and previous.since else now
        waited = now - since
        if waited >= self.unknown_task_wait:
            message = f"{exc}; no worker that knows it claimed the job within {waited:.0f}s"
            # Without ``since``: a dead letter retried later waits afresh.
            self._dead_letter(job, ErrorInfo(kind, message))
            return
        low, high = UNKNOWN_TASK_RECHECK
        delay = min(max(waited / 2, low), high, self.unknown_task_wait - waited)
        # Once a task at warning level: a shared broker may hold thousands of such jobs.
        first = job.task not in self._unknown_tasks_seen
        self._unknown_tasks_seen.add(job.task)
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "%s (job %s): this worker does not know the task; putting the job back for "
            "another worker (%.0fs of %.0fs waited)",
            job.task,
            job.id,
            waited,
            self.unknown_task_wait,
            extra={"task": job.task, "job_id": job.id, "error_type": kind},
        )
        reason = ErrorInfo(kind, str(exc), since=since)
        self._report(
            job, OutcomeKind.REQUEUE, _UNKNOWN_TASK_TALLY, error=reason, retry_at=now + delay
        )

    def _dead_letter(self, job: JobRecord, error: ErrorInfo) -> None:
        logger.error(
            "%s (job %s) failed for good after attempt %d of %d with %s: %s",
            job.task,
            job.id,
            job.attempts,
            job.max_attempts,
            error.type,
            error.message,
            extra=self._log_fields(job, error),
        )
        self.app.hooks.emit("on_dead_letter", self, job, error)
        self._report(job, OutcomeKind.FAILED, error=error)

    @staticmethod
    def _log_fields(job: JobRecord, error: ErrorInfo) -> dict[str, Any]:
        return {
            "task": job.task,
            "job_id": job.id,
            "attempt": job.attempts,
            "error_type": error.type,
            "error_message": error.message,
        }

    # -- settling ---------------------------------------------------------------------

    def _report(
        self, job: JobRecord, kind: OutcomeKind, tally: str | None = None, **fields: Any
    ) -> None:
        self._writer.add(Outcome(job_id=job.id, worker=self.id, kind=kind, **fields))
        self.tally[tally or _TALLY[kind]] += 1

    # -- heartbeat --------------------------------------------------------------------

    async def _heartbeat_loop(self, broker: Broker) -> None:
        loop = asyncio.get_running_loop()
        next_maintenance = loop.time() + self.maintenance_interval
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self._beat(broker)
                if loop.time() >= next_maintenance:
                    next_maintenance = loop.time() + self.maintenance_interval
                    await broker.recover()
            except Exception as exc:
                logger.warning(
                    "heartbeat failed (%s: %s); will try again",
                    type(exc).__name__,
                    exc,
                    extra={"worker": self.id, "error_type": type(exc).__name__},
                )

    async def _beat(self, broker: Broker) -> None:
        lost = await broker.extend(self.id, list(self._running), self.lease)
        for job_id in lost:
            entry = self._running.get(job_id)
            if entry is not None and job_id not in self._cancel_reason:
                logger.info(
                    "stopping %s (job %s): it was cancelled or its lease was lost",
                    entry[0].task,
                    job_id,
                    extra={"task": entry[0].task, "job_id": job_id},
                )
                self._cancel_reason[job_id] = _CANCELLED
                entry[1].cancel()
        await broker.register_worker(self.info())

    # -- shutdown ---------------------------------------------------------------------

    async def _drain(self) -> None:
        """Give running jobs the grace period, then put the unfinished ones back."""
        if self._running and not self._stop_now.is_set():
            logger.info(
                "waiting up to %.0fs for %d running jobs",
                self.grace_period,
                len(self._running),
                extra={"worker": self.id},
            )
            everything: asyncio.Future[Any] = asyncio.gather(
                *(t for _, t in self._running.values()), return_exceptions=True
            )
            now_waiter: asyncio.Future[Any] = asyncio.ensure_future(self._stop_now.wait())
            await asyncio.wait(
                [everything, now_waiter],
                timeout=self.grace_period,
                return_when=asyncio.FIRST_COMPLETED,
            )
            now_waiter.cancel()
        if self._running:
            logger.warning(
                "putting %d unfinished jobs back in their queues",
                len(self._running),
                extra={"worker": self.id},
            )
        for job_id, (_, task) in list(self._running.items()):
            self._cancel_reason.setdefault(job_id, _SHUTDOWN)
            task.cancel()
        if self._running:
            await asyncio.gather(*(t for _, t in self._running.values()), return_exceptions=True)
