"""The in-process queue: ``jobs.enqueue(func, ...)`` on ``memory://``.

Fire-and-forget work for a web process, as lean as the work allows: any
callable (lambdas, closures, bound methods; nothing is serialized), run by a
fixed pool of coroutines on the app's loop (plain functions in a thread pool),
in a copy of the enqueuer's ``contextvars`` so request-scoped context works
inside it. Bounded: past ``max_pending`` jobs, :class:`TaskQueueFull`. Nothing
is kept once a job is done, so a busy app does not grow. Work that must
survive a restart or be retried belongs on a durable broker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import enum
import functools
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from .callables import callable_name, is_async_callable
from .errors import JobCancelled, JobFailed, ResultTimeout, TaskQueueFull, TaskQueueNotRunning
from .job import JobStatus, error_info
from .threads import DaemonThreadPool

logger = logging.getLogger("afterwork.inprocess")
_ids = itertools.count(1)


class _State(enum.Enum):
    QUEUED = JobStatus.QUEUED
    RUNNING = JobStatus.RUNNING
    SUCCEEDED = JobStatus.SUCCEEDED
    FAILED = JobStatus.FAILED
    CANCELLED = JobStatus.CANCELLED


class LocalJob:
    """A handle on an in-process job, with the same reading methods as :class:`JobHandle`."""

    __slots__ = (
        "_callbacks",
        "_error",
        "_result",
        "_state",
        "_task",
        "args",
        "context",
        "func",
        "id",
        "is_async",
        "kwargs",
        "name",
    )

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.id = f"local-{next(_ids)}"
        self.func = func
        self.name = callable_name(func)
        self.is_async = is_async_callable(func)
        self.args = args
        self.kwargs = kwargs
        self.context = contextvars.copy_context()
        self._state = _State.QUEUED
        self._result: Any = None
        self._error: BaseException | None = None
        self._task: asyncio.Future[Any] | None = None
        self._callbacks: list[Callable[[], None]] | None = None

    def __repr__(self) -> str:
        return f"<LocalJob {self.id} {self.name} {self._state.value}>"

    def status(self) -> JobStatus:
        return self._state.value

    async def astatus(self) -> JobStatus:
        return self._state.value

    def done(self) -> bool:
        return self._state in (_State.SUCCEEDED, _State.FAILED, _State.CANCELLED)

    def _finish(
        self, state: _State, result: Any = None, error: BaseException | None = None
    ) -> None:
        self._state, self._result, self._error = state, result, error
        self.func = self.args = self.kwargs = None  # type: ignore[assignment]
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:  # one waiter gone wrong must not keep news from the rest
                logger.exception("a waiter on in-process job %s failed", self.id)

    def _on_done(self, callback: Callable[[], None]) -> None:
        # Called on the queue's loop or under the caller's check; a callback
        # added after the job is done runs at once.
        if self.done():
            callback()
        else:
            (self._callbacks if self._callbacks is not None else self._set_callbacks()).append(
                callback
            )

    def _set_callbacks(self) -> list[Callable[[], None]]:
        self._callbacks = []
        return self._callbacks

    def _outcome(self, timeout: float | None) -> Any:
        if self._state is _State.SUCCEEDED:
            return self._result
        if self._state is _State.CANCELLED:
            raise JobCancelled(f"job {self.id} was cancelled")
        if self._state is _State.FAILED:
            assert self._error is not None
            info = error_info(self._error)
            raise JobFailed(self.id, info.type, info.message, info.traceback) from self._error
        raise ResultTimeout(f"job {self.id} is still {self._state.value} after {timeout}s")

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job (from a thread that is not running the queue's loop)."""
        if not self.done():
            event = threading.Event()
            self._on_done(event.set)
            event.wait(timeout)
        return self._outcome(timeout)

    async def aresult(self, timeout: float | None = None) -> Any:
        if not self.done():
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                if not loop.is_closed():  # the waiter may have given up, its loop gone
                    loop.call_soon_threadsafe(_resolve, waiter)

            self._on_done(wake)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)
        return self._outcome(timeout)

    def cancel(self) -> bool:
        """Cancel a queued job (it never runs) or a running async one."""
        if self._state is _State.QUEUED:
            self._finish(_State.CANCELLED)
            return True
        if self._state is _State.RUNNING and self._task is not None:
            loop = self._task.get_loop()
            loop.call_soon_threadsafe(self._task.cancel)
            return True
        return False

    async def acancel(self) -> bool:
        return self.cancel()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class InProcessQueue:
    """A bounded queue run ``concurrency`` jobs at a time on one event loop.

    Each job is one asyncio task, created in the enqueuer's context; jobs past
    the concurrency limit wait in a deque, and a finishing job starts the next,
    so a job costs one task and no hand-off between coroutines.
    """

    def __init__(self, *, max_pending: int, concurrency: int) -> None:
        self.max_pending = max_pending
        self.concurrency = concurrency
        self._pending = 0  # queued + running; guarded by _lock
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._backlog: collections.deque[LocalJob] = collections.deque()
        self._active: set[asyncio.Task[None]] = set()
        self._running = 0  # launched and not yet finished; only touched on the loop
        self._threads: DaemonThreadPool | None = None
        self._idle = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._accepting

    def __len__(self) -> int:
        return self._pending

    async def start(self) -> None:
        if self._loop is not None:
            return
        self._threads = DaemonThreadPool(self.concurrency, "afterwork-local")
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop = asyncio.get_running_loop()
        self._accepting = True

    def submit(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> LocalJob:
        """Queue a call; safe from any thread. Raises at once when full or not running."""
        loop = self._loop
        if loop is None or not self._accepting:
            raise TaskQueueNotRunning(
                f"cannot enqueue {callable_name(func)}: the in-process queue is not running. "
                "It runs while the app does: add AfterworkMiddleware(jobs=...) or call "
                "await jobs.start() at startup (jobs.start_in_thread() in a WSGI app)"
            )
        with self._lock:
            if self._pending >= self.max_pending:
                raise TaskQueueFull(
                    f"the in-process queue already holds {self.max_pending} jobs, so "
                    f"{callable_name(func)} was not queued; the app is overloaded: shed the "
                    "work, raise Afterwork(max_pending=...), or use a durable broker with workers"
                )
            self._pending += 1
        job = LocalJob(func, args, kwargs)
        try:
            same_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            same_loop = False
        if same_loop:
            self._admit(job)
        else:
            loop.call_soon_threadsafe(self._admit, job)
        return job

    def _admit(self, job: LocalJob) -> None:
        self._idle.clear()
        if self._running < self.concurrency:
            self._launch(job)
        else:
            self._backlog.append(job)

    def _launch(self, job: LocalJob) -> None:
        assert self._loop is not None
        self._running += 1
        self._active.add(self._loop.create_task(self._execute(job), context=job.context))

    async def _execute(self, job: LocalJob) -> None:
        try:
            if job._state is _State.QUEUED:  # not cancelled while it waited
                await self._call(job)
        finally:
            self._active.discard(asyncio.current_task())
            self._running -= 1
            self._done()
            while self._backlog and self._running < self.concurrency:
                following = self._backlog.popleft()
                if following._state is _State.QUEUED:
                    self._launch(following)
                else:
                    self._done()  # cancelled while it waited

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    async def _call(self, job: LocalJob) -> None:
        job._state = _State.RUNNING
        try:
            if job.is_async:
                job._task = asyncio.current_task()
                result = await job.func(*job.args, **job.kwargs)
            else:
                loop = asyncio.get_running_loop()
                # This task already runs in the job's context; the thread gets a copy.
                context = contextvars.copy_context()
                call = functools.partial(context.run, job.func, *job.args, **job.kwargs)
                result = await loop.run_in_executor(self._threads, call)
        except asyncio.CancelledError:
            job._finish(_State.CANCELLED)
            raise
        except BaseException as exc:  # SystemExit in a task must not stop the queue
            logger.exception(
                "in-process job %s (%s) failed with %s: %s",
                job.name,
                job.id,
                type(exc).__name__,
                exc,
                extra={"task": job.name, "job_id": job.id, "error_type": type(exc).__name__},
            )
            job._finish(_State.FAILED, error=exc)
        else:
            job._finish(_State.SUCCEEDED, result)

    async def stop(self, grace_period: float) -> int:
        """Stop taking jobs, give queued and running ones ``grace_period`` seconds, then
        cancel what is left. Returns (and logs) the number of jobs dropped."""
        if self._loop is None:
            return 0
        self._accepting = False  # no more submissions; the backlog still runs
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_period)
        dropped = self._pending
        while self._backlog:
            self._backlog.popleft()._finish(_State.CANCELLED)
        active = list(self._active)
        for task in active:
            task.cancel()
        await asyncio.gather(*active, return_exceptions=True)
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        self._pending = 0
        self._loop = None
        if dropped:
            logger.warning(
                "the in-process queue stopped with %d jobs unfinished after %.1fs; they were "
                "dropped",
                dropped,
                grace_period,
                extra={"dropped": dropped},
            )
        return dropped
