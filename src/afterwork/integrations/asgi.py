"""``AfterworkMiddleware``: after-response work and the app's job lifecycle for any ASGI app.

Wrap Starlette, FastAPI, Litestar or a plain ASGI callable. Per request it
provides ``request.state.background`` (a :class:`BackgroundTasks`) and makes
:func:`after_response` work anywhere in the request's code. The collected
tasks start once the app has finished with the request (the response is
sent), as asyncio tasks of their own while the lifespan runs: a client that
disconnects cannot cancel them. On lifespan startup (after the app's own startup) it starts the
:class:`Afterwork` app's in-process queue and embedded worker, if one is
given; on shutdown it waits for running after-response work and queued jobs
for up to ``grace_period`` seconds in all, then stops the worker, and only
then lets the app's own shutdown handlers run. An app that does not speak
the lifespan protocol gets one from the middleware.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from ..background import (
    BackgroundTask,
    BackgroundTasks,
    ErrorHandler,
    _current_tasks,
)
from ..defaults import DEFAULT_GRACE_PERIOD

if TYPE_CHECKING:
    from ..app import Afterwork

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("afterwork.asgi")


class DetachedRunner:
    """Runs after-response work as asyncio tasks of their own; waits for them at shutdown."""

    def __init__(self) -> None:
        #: What runs now, and the calls each asyncio task runs (for the shutdown log).
        self._running: dict[asyncio.Task[None], list[BackgroundTask]] = {}

    def spawn(
        self, owner: BackgroundTasks, tasks: list[BackgroundTask], *, shared: bool = True
    ) -> None:
        """Start ``tasks`` detached. ``shared=False``: they were made for this run alone, so
        they may change their own context instead of a copy (a response's ``background=``
        may be one object used by every request)."""
        if len(tasks) == 1:  # the common case: one asyncio task, in the task's own context
            only = tasks[0]
            task = asyncio.Task(
                self._run_one(owner, only),
                context=only.context.copy() if shared else only.context,
            )
        else:
            task = asyncio.Task(self._run_all(owner, tasks))
        self._running[task] = tasks

    # Each removes itself when done: cheaper than a done callback, which costs
    # the loop one more turn per request. _run_one is BackgroundTasks.run_one
    # inlined, as it runs once per request.
    async def _run_one(self, owner: BackgroundTasks, task: BackgroundTask) -> None:
        try:
            if task.is_async:
                await task.func(*task.args, **task.kwargs)
            else:
                await task.run()
        except Exception as exc:
            await owner.failed(task, exc)
        finally:
            del self._running[asyncio.current_task()]  # type: ignore[arg-type]

    async def _run_all(self, owner: BackgroundTasks, tasks: list[BackgroundTask]) -> None:
        try:
            await owner.run_all(tasks)
        finally:
            del self._running[asyncio.current_task()]  # type: ignore[arg-type]

    @property
    def running(self) -> int:
        return len(self._running)

    async def drain(self, timeout: float) -> int:
        """Wait for running work up to ``timeout``; cancel what is left and log it.

        Returns the number of asyncio tasks cancelled.
        """
        if not self._running:
            return 0
        running = dict(self._running)
        _, still = await asyncio.wait(running, timeout=max(timeout, 0.0))
        if not still:
            return 0
        names = sorted({t.name for task in still for t in running[task]})
        logger.warning(
            "shutdown: after-response work did not finish within %.1fs and was cancelled: %s",
            timeout,
            ", ".join(names),
            extra={"dropped": len(still), "tasks": names},
        )
        for task in still:
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)
        return len(still)


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
        self.runner = DetachedRunner()
        #: Between lifespan startup and shutdown. Only then is after-response work
        #: detached: outside it nothing would wait for the work at shutdown (a
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
        tasks = BackgroundTasks(concurrent=self.concurrent, on_error=self.on_error)
        live = self.live
        if live:
            tasks.runner = self.runner
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
                if live:
                    self.runner.spawn(tasks, collected, shared=False)
                else:
                    await tasks.run_all(collected)

    # -- lifespan -----------------------------------------------------------------------

    async def startup(self) -> None:
        """Start each app's in-process queue and embedded worker."""
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_period
        await self.runner.drain(self.grace_period)
        remaining = max(deadline - loop.time(), 0.0)
        await asyncio.gather(*(jobs.stop(grace_period=remaining) for jobs in self.jobs))

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
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
