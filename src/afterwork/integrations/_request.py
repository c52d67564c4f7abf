"""After-response work for WSGI-style frameworks (Flask, Django): collect per request, run on close.

A WSGI server calls the response's ``close()`` once the body is sent; the
framework integrations run the request's tasks there, one after the other, in
the thread that served the request (an ASGI Django app hands them to its event
loop instead). Each task runs in a copy of the context it was created in (or,
for tasks that keep none, of the request's), so request-scoped context
variables reach it. A failing task is logged (and shown to ``on_error``) and
never stops the next.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
from collections.abc import Coroutine
from typing import Any

from ..background import BackgroundTask, BackgroundTasks
from ..eventloops import loop_runs_here, run_in_context, run_in_thread

logger = logging.getLogger("afterwork.background")


def take(tasks: BackgroundTasks) -> list[BackgroundTask]:
    """Take the tasks collected so far; where supported, the collection is closed for good."""
    seal = getattr(tasks, "seal", None)
    if seal is not None:
        taken: list[BackgroundTask] = seal()
        return taken
    taken, tasks.tasks = tasks.tasks, []
    return taken


def _context_of(task: BackgroundTask) -> contextvars.Context:
    context = getattr(task, "context", None)
    return context.copy() if context is not None else contextvars.copy_context()


def _run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion from sync code, on a loop of its own."""
    if not loop_runs_here():
        return asyncio.run(coro)
    # A loop already runs in this thread (a sync close() called from async code):
    # it cannot be re-entered, so the coroutine gets a thread and a loop of its own.
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["value"] = context.run(asyncio.run, coro)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="afterwork-after-response")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _call(task: BackgroundTask) -> None:
    if task.is_async:
        _run_coroutine(task.func(*task.args, **task.kwargs))
    else:
        task.func(*task.args, **task.kwargs)


def run_sync(tasks: BackgroundTasks) -> None:
    """Run every task here and now, in order; failures are logged and never propagate."""
    for task in take(tasks):
        try:
            _context_of(task).run(_call, task)
        except Exception as exc:
            _run_coroutine(tasks.failed(task, exc))  # logged, then shown to on_error


async def run_async(tasks: BackgroundTasks) -> None:
    """Run every task on the running loop (sync ones in a worker thread), in order."""
    while tasks.tasks:
        for task in take(tasks):
            context = _context_of(task)
            try:
                if task.is_async:
                    await run_in_context(task.func(*task.args, **task.kwargs), context)
                else:
                    await run_in_thread(
                        functools.partial(context.run, task.func, *task.args, **task.kwargs)
                    )
            except Exception as exc:
                await tasks.failed(task, exc)
