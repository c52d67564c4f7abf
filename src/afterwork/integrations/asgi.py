"""``AfterworkMiddleware``: after-response work and the app's job lifecycle for any ASGI app.

Wrap Starlette, FastAPI, Litestar or a plain ASGI callable. Per request it
provides ``request.state.background`` (a :class:`BackgroundTasks`) and makes
:func:`after_response` work anywhere in the request's code. The collected
tasks start once the app has sent the response, detached from the request, so
a client that disconnects cannot cancel them. On lifespan startup (after the
app's own startup) it starts the :class:`Afterwork` app's embedded worker, if
one is given; on shutdown it waits for running after-response work for up to
``grace_period`` seconds, stops the worker, and only then lets the app's own
shutdown handlers run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from ..background import BackgroundTasks, _current_runner, _current_tasks
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
    """Runs after-response work as tasks of their own and can wait for them at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float) -> None:
        """Wait for running work up to ``timeout``; cancel (and log) what is left."""
        if not self._tasks:
            return
        pending = set(self._tasks)
        _, still = await asyncio.wait(pending, timeout=timeout)
        if still:
            logger.warning(
                "shutdown: %d after-response tasks did not finish within %.0fs; cancelling them",
                len(still),
                timeout,
                extra={"dropped": len(still)},
            )
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)


class AfterworkMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        jobs: Afterwork | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        concurrent: bool = False,
    ) -> None:
        self.app = app
        self.jobs = jobs
        self.grace_period = grace_period
        self.concurrent = concurrent
        self.runner = DetachedRunner()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), self._lifespan_send(send))
            return
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        tasks = BackgroundTasks(concurrent=self.concurrent)
        scope.setdefault("state", {})["background"] = tasks
        tasks_token = _current_tasks.set(tasks)
        runner_token = _current_runner.set(self.runner)
        try:
            await self.app(scope, receive, send)
        finally:
            _current_tasks.reset(tasks_token)
            _current_runner.reset(runner_token)
            if tasks.tasks:
                self.runner.spawn(tasks.run_all())

    def _lifespan_send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete" and self.jobs is not None:
                try:
                    await self.jobs.start()
                except Exception as exc:
                    logger.exception("could not start afterwork's embedded worker")
                    message = {"type": "lifespan.startup.failed", "message": str(exc)}
            await send(message)

        return wrapped

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.shutdown()
            return message

        return wrapped

    async def shutdown(self) -> None:
        """Wait for after-response work, then stop the embedded worker (each bounded)."""
        await self.runner.drain(self.grace_period)
        if self.jobs is not None:
            await self.jobs.stop(grace_period=self.grace_period)
