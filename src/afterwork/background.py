"""Work that runs after the response is sent: ``BackgroundTask(s)`` and ``after_response``.

Drop-in for Starlette's ``background=`` (responses, route decorators), with two
differences users ask for: one failing task never stops the ones after it
(each failure is logged, and an ``on_error`` handler may see it), and under
:class:`~afterwork.integrations.asgi.AfterworkMiddleware` the tasks run
detached from the request, so a client that disconnects cannot cancel them.

A task runs with the context variables as they were when it was created (a
request id set by a middleware or the handler is there), in a copy of its own.

The calls run wherever Starlette does, asyncio or trio (see :mod:`.eventloops`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol

from .callables import callable_name, is_async_callable
from .errors import OutsideRequest
from .eventloops import anyio_needed, run_in_context, run_in_thread, running_asyncio_loop

if TYPE_CHECKING:
    # For type checkers only: Starlette and FastAPI type ``background=`` as their
    # own BackgroundTask, which these classes stand in for (they only call it).
    from starlette.background import BackgroundTask as _Accepted
else:
    _Accepted = object

P = ParamSpec("P")
logger = logging.getLogger("afterwork.background")

ErrorHandler = Callable[["BackgroundTask", BaseException], Awaitable[None] | None]


# -- after-response calls ------------------------------------------------------------------


class Runner(Protocol):
    """Where detached after-response work goes (the middleware provides one)."""

    @property
    def closing(self) -> bool:
        """Whether it takes no more work (the app shuts down): the request runs it then."""
        ...

    def spawn(
        self, owner: BackgroundTasks, tasks: list[BackgroundTask], *, shared: bool = True
    ) -> None: ...


_current_tasks: contextvars.ContextVar[BackgroundTasks | None] = contextvars.ContextVar(
    "afterwork_background_tasks", default=None
)


def _outside_request(what: str) -> OutsideRequest:
    return OutsideRequest(
        f"{what} was called outside a request; it needs AfterworkMiddleware (or a framework "
        "integration) around the app, and works only while a request is handled. Outside "
        "requests (scripts, startup code, background tasks) use jobs.enqueue(...) to run "
        "work in the background"
    )


class BackgroundTask(_Accepted):
    """One call to run after the response: coroutines are awaited, functions run in a thread."""

    __slots__ = ("args", "context", "func", "is_async", "kwargs")

    def __init__(self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> None:
        if not callable(func):
            raise TypeError(f"a background task must be callable; got {func!r}")
        # (ignores only because type checkers see Starlette's class as the base)
        self.func: Callable[..., Any] = func
        self.args: tuple[Any, ...] = args  # type: ignore[assignment]
        self.kwargs: dict[str, Any] = kwargs  # type: ignore[assignment]
        self.is_async = is_async_callable(func)
        #: The context variables it runs with: those of the code that created it.
        self.context = contextvars.copy_context()

    def __repr__(self) -> str:
        return f"<BackgroundTask {self.name}>"

    @property
    def name(self) -> str:
        return callable_name(self.func)

    async def run(self) -> None:
        """Run the call in the current context, raising what it raises.

        :class:`BackgroundTasks` calls this in a copy of :attr:`context` and
        isolates failures; call the task itself (``await task()``) for that.
        """
        if self.is_async:
            await self.func(*self.args, **self.kwargs)
            return
        context = contextvars.copy_context()  # so the context variables reach the thread
        await run_in_thread(functools.partial(context.run, self.func, *self.args, **self.kwargs))

    async def __call__(self) -> None:
        await BackgroundTasks([self])()


class BackgroundTasks(_Accepted):
    """An ordered collection of after-response calls; ``add_task`` adds one.

    ``concurrent=True`` runs them at the same time instead of one after the
    other. ``on_error(task, exc)`` (sync or async) sees every failure after it
    is logged.
    """

    __slots__ = ("_sealed", "concurrent", "on_error", "runner", "tasks")

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
        self._sealed = False  # set once the request that collected these is over
        #: Where a request's collection sends work detached (the middleware's runner).
        self.runner: Runner | None = None

    @classmethod
    def for_request(
        cls, runner: Runner | None, concurrent: bool, on_error: ErrorHandler | None
    ) -> BackgroundTasks:
        """An empty collection for one request, sending its work to ``runner`` if given.

        Made once per request, so without ``__init__``'s keyword call, which
        costs twice as much.
        """
        tasks = cls.__new__(cls)
        tasks.tasks = []
        tasks.concurrent = concurrent
        tasks.on_error = on_error
        tasks._sealed = False
        tasks.runner = runner
        return tasks

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"<BackgroundTasks {[t.name for t in self.tasks]}>"

    def add_task(self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> None:
        if self._sealed:
            raise _outside_request(f"add_task({callable_name(func)}) on a finished request's tasks")
        self.tasks.append(BackgroundTask(func, *args, **kwargs))

    def seal(self) -> list[BackgroundTask]:
        """End collection (the request is over) and take the tasks collected so far."""
        self._sealed = True
        tasks, self.tasks = self.tasks, []
        return tasks

    async def run_all(self, tasks: list[BackgroundTask] | None = None) -> None:
        """Run every task (or ``tasks``), here and now; failures are logged, never raised.

        Each runs isolated, in (a copy of) its own context.
        """
        if tasks is None:
            tasks, self.tasks = self.tasks, []
        if self.concurrent and len(tasks) > 1:
            await self._run_together(tasks)
            return
        for task in tasks:
            await run_in_context(self.run_one(task), task.context.copy())

    async def _run_together(self, tasks: list[BackgroundTask]) -> None:
        """Run ``tasks`` at the same time, each in a task of its own (``concurrent=True``)."""
        loop = running_asyncio_loop()
        if loop is not None:
            await asyncio.gather(
                *(loop.create_task(self.run_one(t), context=t.context.copy()) for t in tasks)
            )
            return
        with anyio_needed():
            import anyio
        async with anyio.create_task_group() as group:
            for task in tasks:  # a task started in a context starts in a copy of it
                task.context.run(group.start_soon, self.run_one, task)

    async def run_one(self, task: BackgroundTask) -> None:
        """Run one task in the current context: a failure is logged and reported, not raised."""
        _current_tasks.set(None)  # the request is over: after_response here says so
        try:
            if task.is_async:  # (task.run(), one coroutine frame less)
                await task.func(*task.args, **task.kwargs)
            else:
                await task.run()
        except Exception as exc:
            await self.failed(task, exc)

    async def failed(self, task: BackgroundTask, exc: Exception) -> None:
        """Log a task's failure, then show it to ``on_error``."""
        logger.exception(
            "background task %s failed with %s: %s",
            task.name,
            type(exc).__name__,
            exc,
            extra={"task": task.name, "error_type": type(exc).__name__},
            exc_info=exc,
        )
        if self.on_error is None:
            return
        try:
            outcome = self.on_error(task, exc)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception("the on_error handler failed for background task %s", task.name)

    async def __call__(self) -> None:
        """What a framework calls after sending the response.

        Under the middleware the work is handed to it and this returns at
        once; elsewhere (or once the app shuts down, on trio) the tasks run
        before this returns, as in Starlette.
        """
        request = _current_tasks.get()
        runner = None if request is None else request.runner
        if runner is None or runner.closing:
            await self.run_all()
        elif self.tasks:
            tasks, self.tasks = self.tasks, []
            runner.spawn(self, tasks)


def after_response(func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> None:
    """Run ``func(*args, **kwargs)`` after the current request's response is sent.

    Callable from anywhere while a request is handled (views, services,
    helpers) under :class:`~afterwork.integrations.asgi.AfterworkMiddleware`
    or a framework integration; elsewhere it raises :class:`OutsideRequest`.
    """
    tasks = _current_tasks.get()
    if tasks is None or tasks._sealed:
        raise _outside_request(f"after_response({callable_name(func)})")
    tasks.tasks.append(BackgroundTask(func, *args, **kwargs))


def current_tasks() -> BackgroundTasks | None:
    """The collection of the request being handled, if any (and still open)."""
    tasks = _current_tasks.get()
    return None if tasks is None or tasks._sealed else tasks


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
