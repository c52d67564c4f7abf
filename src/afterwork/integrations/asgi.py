"""``AfterworkMiddleware``: after-response work and the app's job lifecycle for any ASGI app.

Wrap Starlette, FastAPI, Litestar or a plain ASGI callable. Per request it
provides ``request.state.background`` (a :class:`BackgroundTasks`) and makes
:func:`after_response` work anywhere in the request's code. The collected
tasks start once the app has finished with the request (the response is
sent), in tasks of the middleware's own while the lifespan runs: a client
that disconnects cannot cancel them. A request that ends once the runner
takes no more work (on trio, from the shutdown's drain on) runs its tasks
itself, as a request outside the lifespan does. On lifespan startup (after the app's own
startup) it starts the :class:`Afterwork` app's in-process queue and embedded
worker, if one is given; on shutdown it waits for running after-response work
and queued jobs for up to ``grace_period`` seconds in all, then stops the
worker, and only then lets the app's own shutdown handlers run. An app that
does not speak the lifespan protocol gets one from the middleware.

After-response work runs on asyncio (:class:`DetachedRunner`) and on trio
(:class:`TaskGroupRunner`, through anyio); the in-process worker needs
asyncio, and on trio the lifespan refuses to start with ``jobs=``, saying so.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Mapping,
    MutableMapping,
    Sequence,
)
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ..background import BackgroundTask, BackgroundTasks, ErrorHandler, _current_tasks
from ..defaults import DEFAULT_GRACE_PERIOD
from ..errors import ConfigurationError
from ..eventloops import anyio_needed, resume, running_asyncio_loop

if TYPE_CHECKING:
    from anyio import CancelScope
    from anyio.abc import TaskGroup

    from ..app import Afterwork

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("afterwork.asgi")

#: One request's calls to run detached: their collection, the calls, the context to run in.
_Work = tuple[BackgroundTasks, list[BackgroundTask], contextvars.Context]


class _Batch:
    """Calls handed over in one turn of the event loop, started one after the other."""

    __slots__ = ("current", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[_Work] = deque()
        #: The call that waited, once one did: the batch's task is its own from then on.
        self.current: _Work | None = None

    def names(self) -> set[str]:
        work = [*self.waiting, self.current] if self.current else self.waiting
        return {t.name for _, tasks, _ in work for t in tasks}


class DetachedRunner:
    """Runs after-response work in asyncio tasks of its own; waits for them at shutdown.

    The calls handed over in one turn of the event loop start in the next, in
    one asyncio task, one after the other, each in its own context: a call
    that finishes without waiting (a no-op, a counter, a log line) costs no
    asyncio task of its own. The first call that waits keeps that task to
    itself until it ends, and the calls after it move to a new task: a call
    runs in one and the same task from its first line to its last, so
    ``asyncio.timeout``, anyio cancel scopes and task groups work in it as
    anywhere else.
    """

    #: Never: an asyncio task starts at any time, even after the lifespan. The drain
    #: waits (up to its deadline) for those started while it runs, too.
    closing = False

    def __init__(self) -> None:
        #: What runs now, and the calls each asyncio task runs (for the shutdown log).
        self._running: dict[asyncio.Task[None], _Batch] = {}
        self._open: _Batch | None = None  # the batch that takes new calls

    def spawn(
        self, owner: BackgroundTasks, tasks: list[BackgroundTask], *, shared: bool = True
    ) -> None:
        """Start ``tasks`` detached. ``shared=False``: they were made for this run alone, so
        they may change their own context instead of a copy (a response's ``background=``
        may be one object used by every request)."""
        if len(tasks) == 1:  # the common case: the call runs in the task's own context
            context = tasks[0].context.copy() if shared else tasks[0].context
        else:  # run_all gives each call its own
            context = contextvars.Context()
        (self._open or self._new_batch()).waiting.append((owner, tasks, context))

    def _new_batch(self) -> _Batch:
        batch = self._open = _Batch()
        task = asyncio.Task(self._run(batch), context=contextvars.Context())
        self._running[task] = batch
        return batch

    async def _run(self, batch: _Batch) -> None:
        waiting = batch.waiting
        try:
            while waiting:
                owner, tasks, context = work = waiting.popleft()
                call = tasks[0]
                # A coroutine function's coroutine is stepped as it is, without a wrapper
                # (once per request); anything else goes through run_all.
                bare = len(tasks) == 1 and call.is_async
                try:
                    coro = call.func(*call.args, **call.kwargs) if bare else owner.run_all(tasks)
                    waiting_on = context.run(coro.send, None)
                except StopIteration:
                    continue
                except asyncio.CancelledError:  # the call cancelled itself: not the others
                    continue
                except Exception as exc:  # it failed before it waited: report it in its place
                    bare = False
                    coro = owner.failed(call, exc)
                    try:
                        waiting_on = context.run(coro.send, None)
                    except StopIteration:
                        continue
                # It waits: this task is its own from now on, the rest go to a new one.
                if self._open is batch:
                    self._open = None
                batch.current = work
                self._hand_over(waiting)
                if bare:
                    await self._finish(owner, call, coro, context, waiting_on)
                else:
                    await resume(coro, context, waiting_on)
                return
        finally:
            if self._open is batch:
                self._open = None
            self._hand_over(waiting)  # left only if a call raised KeyboardInterrupt or the like
            del self._running[asyncio.current_task()]  # type: ignore[arg-type]

    def _hand_over(self, waiting: deque[_Work]) -> None:
        if waiting:
            (self._open or self._new_batch()).waiting.extend(waiting)
            waiting.clear()

    @staticmethod
    async def _finish(
        owner: BackgroundTasks,
        call: BackgroundTask,
        coro: Coroutine[Any, Any, Any],
        context: contextvars.Context,
        waiting_on: Any,
    ) -> None:
        """The rest of a call's coroutine, then its failure report if it fails."""
        try:
            await resume(coro, context, waiting_on)
        except Exception as exc:
            await resume(owner.failed(call, exc), context)

    @property
    def running(self) -> int:
        """Asyncio tasks running after-response work now."""
        return len(self._running)

    async def drain(self, timeout: float) -> int:
        """Wait for running work up to ``timeout``; cancel what is left and log it.

        Returns the number of asyncio tasks cancelled.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while self._running:  # a task that hands calls over has started another
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.wait(list(self._running), timeout=left)
        if not self._running:
            return 0
        still = dict(self._running)
        self._open = None
        names = sorted(set().union(*(batch.names() for batch in still.values())))
        logger.warning(
            "shutdown: after-response work did not finish within %.1fs and was cancelled: %s",
            timeout,
            ", ".join(names),
            extra={"dropped": len(still), "tasks": names},
        )
        for task in still:
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)
        for task in still:  # one cancelled before it started never removed itself
            self._running.pop(task, None)
        return len(still)


class TaskGroupRunner:
    """Runs after-response work off asyncio (on trio): a task per request, in a task group.

    Trio starts tasks only in a task group (a nursery) that an enclosing task
    holds open, so the middleware's lifespan holds one (:meth:`hosted`) from
    before startup to after shutdown; requests hand their work to it. Each
    hand-over runs in its own cancel scope, so the shutdown can cancel what
    outlives the grace period, and the calls run as ``BackgroundTasks.run_all``
    runs them (one after the other, each in its own context).

    From the start of the drain it takes no more work (:attr:`closing`): the
    drain waits only for what it found, and a request that ends later runs its
    calls itself, since the task group would cancel them as the lifespan ends,
    or is gone.
    """

    def __init__(self, group: TaskGroup) -> None:
        self._group = group
        #: What runs now: each hand-over's cancel scope and its calls (for the shutdown log).
        self._running: dict[CancelScope, list[BackgroundTask]] = {}
        self._idle: Callable[[], None] | None = None  # wakes drain when the last one ends
        #: The drain has begun, or the lifespan is over: :meth:`spawn` is not to be called.
        self.closing = False

    @classmethod
    @asynccontextmanager
    async def hosted(cls) -> AsyncIterator[TaskGroupRunner]:
        """A runner whose task group lives as long as this block (the lifespan)."""
        with anyio_needed():
            import anyio
        try:
            async with anyio.create_task_group() as group:
                runner = cls(group)
                try:
                    yield runner
                finally:  # left running only by a lifespan that ended without a shutdown
                    runner.closing = True
                    runner._cancel_rest(
                        "the app's lifespan ended without a shutdown: "
                        "after-response work was cancelled"
                    )
        except BaseExceptionGroup as errors:  # the lifespan's own error, as on asyncio
            if len(errors.exceptions) != 1:
                raise
            raise errors.exceptions[0] from None

    def spawn(
        self, owner: BackgroundTasks, tasks: list[BackgroundTask], *, shared: bool = True
    ) -> None:
        """Start ``tasks`` detached (``shared`` does not matter: each call runs in a copy).

        Only while not :attr:`closing`; the caller runs them itself otherwise.
        """
        import anyio

        scope = anyio.CancelScope()
        self._running[scope] = tasks
        self._group.start_soon(self._run, scope, owner, tasks)

    async def _run(
        self, scope: CancelScope, owner: BackgroundTasks, tasks: list[BackgroundTask]
    ) -> None:
        try:
            with scope:
                await owner.run_all(tasks)
        finally:
            del self._running[scope]
            if not self._running and self._idle is not None:
                self._idle()

    @property
    def running(self) -> int:
        """Hand-overs whose calls run now."""
        return len(self._running)

    async def drain(self, timeout: float) -> int:
        """Wait for running work up to ``timeout``; cancel what is left and log it.

        Returns the number of hand-overs cancelled. From now on the runner takes
        no more work, so the wait ends at ``timeout``, plus the time the
        cancelled calls take to unwind.
        """
        import anyio

        self.closing = True
        with anyio.move_on_after(max(timeout, 0.0)):
            await self._wait_idle()
        cancelled = self._cancel_rest(
            "shutdown: after-response work did not finish within %.1fs and was cancelled", timeout
        )
        await self._wait_idle()  # the cancelled ones unwind (a blocking call's thread is left)
        return cancelled

    async def _wait_idle(self) -> None:
        import anyio

        while self._running:
            idle = anyio.Event()
            self._idle = idle.set
            try:
                await idle.wait()
            finally:
                self._idle = None

    def _cancel_rest(self, message: str, *args: object) -> int:
        """Cancel what runs, logging ``message % args`` and the calls' names."""
        if not self._running:
            return 0
        names = sorted({task.name for tasks in self._running.values() for task in tasks})
        logger.warning(
            message + ": %s",
            *args,
            ", ".join(names),
            extra={"dropped": len(self._running), "tasks": names},
        )
        for scope in self._running:
            scope.cancel()
        return len(self._running)


def _worker_needs_asyncio() -> ConfigurationError:
    return ConfigurationError(
        "AfterworkMiddleware(jobs=...) starts afterwork's in-process worker, which runs on "
        "asyncio only, but this app runs on another event loop (trio). Run the server on "
        "asyncio (uvicorn, or hypercorn -k asyncio), or drop jobs= from the middleware and "
        "run the jobs in `afterwork worker` processes; after-response work "
        "(request.state.background, after_response, BackgroundTasks) works on trio as it is"
    )


class AfterworkMiddleware:
    """After-response tasks for every request, and ``jobs`` started and stopped with the app.

    ``jobs`` is an :class:`Afterwork` app, or several (say the in-process queue
    on ``memory://`` and a durable one on ``sqlite://``); each gets its
    in-process worker. ``grace_period`` bounds the wait at shutdown
    (after-response work and jobs together); ``concurrent`` runs one request's
    tasks at the same time; ``on_error(task, exc)`` sees each failed task after
    it is logged; ``worker_options`` go to ``jobs.start(...)``
    (``concurrency=``, ``queues=``, ...).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        jobs: Afterwork | Sequence[Afterwork] | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        concurrent: bool = False,
        on_error: ErrorHandler | None = None,
        worker_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        if jobs is None:
            jobs = ()
        self.jobs: tuple[Afterwork, ...] = tuple(jobs) if isinstance(jobs, Sequence) else (jobs,)
        self.grace_period = grace_period
        self.concurrent = concurrent
        self.on_error = on_error
        self.worker_options = dict(worker_options or {})
        #: Where detached work goes: asyncio tasks, or (on trio) the lifespan's task group.
        self.runner: DetachedRunner | TaskGroupRunner = DetachedRunner()
        #: Between lifespan startup and shutdown. Only a request that starts then
        #: detaches its after-response work (if its runner still takes it when the
        #: request ends): otherwise nothing would wait for the work at shutdown (a
        #: server run without lifespan, a test client used without ``with``), so
        #: it runs in the request once the app is done, as Starlette's does.
        self.live = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        # Once per request, so kept lean: one collection, one context variable.
        runner = self.runner if self.live else None  # the lifespan's, as the request starts
        tasks = BackgroundTasks.for_request(runner, self.concurrent, self.on_error)
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["background"] = tasks
        token = _current_tasks.set(tasks)
        try:
            await self.app(scope, receive, send)
        finally:
            _current_tasks.reset(token)
            collected = tasks.seal()
            if collected:
                if runner is None or runner.closing:  # nothing would run them, or wait
                    await tasks.run_all(collected)
                else:
                    runner.spawn(tasks, collected, shared=False)

    # -- lifespan -----------------------------------------------------------------------

    async def startup(self) -> None:
        """Start each app's in-process queue and embedded worker (the lifespan calls this)."""
        if self.jobs and running_asyncio_loop() is None:
            raise _worker_needs_asyncio()
        started: list[Afterwork] = []
        try:
            for jobs in self.jobs:
                await jobs.start(**self.worker_options)
                started.append(jobs)
        except BaseException:
            for jobs in started:
                await jobs.stop(grace_period=0)
            raise
        self.live = True

    async def shutdown(self) -> None:
        """Wait for after-response work, then stop ``jobs``: ``grace_period`` in all."""
        self.live = False
        deadline = time.monotonic() + self.grace_period
        await self.runner.drain(self.grace_period)
        if self.jobs and running_asyncio_loop() is not None:  # they never start elsewhere
            remaining = max(deadline - time.monotonic(), 0.0)
            await asyncio.gather(*(jobs.stop(grace_period=remaining) for jobs in self.jobs))

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        if running_asyncio_loop() is not None:
            if not isinstance(self.runner, DetachedRunner):  # the app ran on trio before
                self.runner = DetachedRunner()
            await self._serve_lifespan(scope, receive, send)
        elif self.jobs:
            await self._refuse_lifespan(receive, send, _worker_needs_asyncio())
        else:  # detached work needs a task group that outlives each request
            async with TaskGroupRunner.hosted() as runner:
                self.runner = runner
                await self._serve_lifespan(scope, receive, send)

    @staticmethod
    async def _refuse_lifespan(receive: Receive, send: Send, error: Exception) -> None:
        """Fail the server's startup with ``error`` before the app starts anything.

        Raised as well, after the failure is sent, as Starlette does, so test
        clients show it too.
        """
        await receive()  # lifespan.startup
        logger.error("%s", error, extra={"error_type": type(error).__name__})
        await send({"type": "lifespan.startup.failed", "message": str(error)})
        raise error

    async def _serve_lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        spoke = False  # whether the app takes part in the lifespan protocol

        async def app_receive() -> Message:
            nonlocal spoke
            spoke = True
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.shutdown()
            return message

        async def app_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("could not start afterwork's in-process worker")
                    message = {"type": "lifespan.startup.failed", "message": str(exc)}
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except Exception:
            if spoke:
                raise
            logger.debug("the app does not handle lifespan events; the middleware does")
        if not spoke:
            await self._own_lifespan(receive, send)

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        """The lifespan protocol for an app that ignores it: start and stop ``jobs``."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("could not start afterwork's in-process worker")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
