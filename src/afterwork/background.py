"""Work that runs after the response is sent: ``BackgroundTask(s)`` and ``after_response``.

Drop-in for Starlette's ``background=`` (responses, route decorators), with two
differences users ask for: one failing task never stops the ones after it
(each failure is logged, and an ``on_error`` handler may see it), and under
:class:`~afterwork.integrations.asgi.AfterworkMiddleware` the tasks run
detached from the request, so a client that disconnects cannot cancel them.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, Protocol

from .errors import OutsideRequest

P = ParamSpec("P")
logger = logging.getLogger("afterwork.background")

ErrorHandler = Callable[["BackgroundTask", BaseException], Awaitable[None] | None]


class Runner(Protocol):
    """Where detached after-response work goes (the middleware provides one)."""

    def spawn(self, work: Awaitable[None]) -> None: ...


_current_tasks: contextvars.ContextVar[BackgroundTasks | None] = contextvars.ContextVar(
    "afterwork_background_tasks", default=None
)
_current_runner: contextvars.ContextVar[Runner | None] = contextvars.ContextVar(
    "afterwork_background_runner", default=None
)


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


def _is_async(func: Callable[..., Any]) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - async callable objects
    )


class BackgroundTask:
    """One call to run after the response: coroutines are awaited, functions run in a thread."""

    __slots__ = ("args", "func", "is_async", "kwargs")

    def __init__(self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> None:
        if not callable(func):
            raise TypeError(f"a background task must be callable; got {func!r}")
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.is_async = _is_async(func)

    def __repr__(self) -> str:
        return f"<BackgroundTask {_name(self.func)}>"

    @property
    def name(self) -> str:
        return _name(self.func)

    async def run(self) -> None:
        """Run the call, raising what it raises (the collection isolates failures)."""
        if self.is_async:
            await self.func(*self.args, **self.kwargs)
            return
        context = contextvars.copy_context()  # so request-scoped variables reach the thread
        call = functools.partial(context.run, self.func, *self.args, **self.kwargs)
        await asyncio.get_running_loop().run_in_executor(None, call)

    async def __call__(self) -> None:
        await BackgroundTasks([self])()


class BackgroundTasks:
    """An ordered collection of after-response calls; ``add_task`` adds one.

    ``concurrent=True`` runs them at the same time instead of one after the
    other. ``on_error(task, exc)`` (sync or async) sees every failure after it
    is logged.
    """

    def __init__(
        self,
        tasks: Iterable[BackgroundTask] = (),
        *,
        concurrent: bool = False,
        on_error: ErrorHandler | None = None,
    ) -> None:
        self.tasks = list(tasks)
        self.concurrent = concurrent
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"<BackgroundTasks {[t.name for t in self.tasks]}>"

    def add_task(self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> None:
        self.tasks.append(BackgroundTask(func, *args, **kwargs))

    async def run_all(self) -> None:
        """Run every task, here and now; failures are logged and never propagate."""
        tasks, self.tasks = self.tasks, []
        if self.concurrent:
            await asyncio.gather(*(self._run_one(t) for t in tasks))
        else:
            for task in tasks:
                await self._run_one(task)

    async def _run_one(self, task: BackgroundTask) -> None:
        try:
            await task.run()
        except Exception as exc:
            logger.exception(
                "background task %s failed with %s: %s",
                task.name,
                type(exc).__name__,
                exc,
                extra={"task": task.name, "error_type": type(exc).__name__},
            )
            if self.on_error is not None:
                await self._report(task, exc)

    async def _report(self, task: BackgroundTask, exc: BaseException) -> None:
        assert self.on_error is not None
        try:
            outcome = self.on_error(task, exc)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception("the on_error handler failed for background task %s", task.name)

    async def __call__(self) -> None:
        """What a framework calls after sending the response.

        Under the middleware the work is handed to it and this returns at
        once; elsewhere the tasks run before this returns, as in Starlette.
        """
        runner = _current_runner.get()
        if runner is None:
            await self.run_all()
        else:
            runner.spawn(self.run_all())


def after_response(func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> None:
    """Run ``func(*args, **kwargs)`` after the current request's response is sent.

    Callable from anywhere while a request is handled (views, services,
    helpers) under :class:`~afterwork.integrations.asgi.AfterworkMiddleware`
    or a framework integration.
    """
    tasks = _current_tasks.get()
    if tasks is None:
        raise OutsideRequest(
            f"after_response({_name(func)}) was called outside a request; it needs "
            "AfterworkMiddleware (or a framework integration) around the app. Outside "
            "requests use jobs.enqueue(...) to run work in the background"
        )
    tasks.add_task(func, *args, **kwargs)


def split_background(body: dict[str, Any]) -> tuple[dict[str, Any], BackgroundTask | None]:
    """The ``{"background": [callable, *args], ...}`` shorthand: strip the key, make the task."""
    if "background" not in body:
        return body, None
    spec = body["background"]
    rest = {k: v for k, v in body.items() if k != "background"}
    if not isinstance(spec, list | tuple) or not spec or not callable(spec[0]):
        raise TypeError(
            'the "background" value must be [callable, *args], e.g. '
            f'{{"background": [send_email, user.email]}}; got {spec!r}'
        )
    return rest, BackgroundTask(spec[0], *spec[1:])
