"""``AfterworkMiddleware`` for Django: after-response tasks for every view.

Per request it provides ``request.background`` (a :class:`BackgroundTasks`)
and makes :func:`after_response` work anywhere in the request's code. The
tasks run once the server has sent the response, when it closes the response:
under WSGI in the thread that served the request, one after the other; under
ASGI as a task on the server's event loop. A failing task is logged and never
stops the next. Responses that carry tasks get a ``Content-Length`` when they
have none, so a client knows the body is complete without waiting for the
connection to close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import close_old_connections
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from ...background import BackgroundTasks, _current_tasks
from .._request import run_async, run_sync

__all__ = ["AfterworkMiddleware"]

logger = logging.getLogger("afterwork.django")

# After-response work on an ASGI server's loop; kept here so it is not collected mid-run.
_running: set[asyncio.Task[None]] = set()


class AfterworkMiddleware:
    """Add ``"afterwork.integrations.django.AfterworkMiddleware"`` to ``MIDDLEWARE``, first."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        tasks = self._collect(request)
        token = _current_tasks.set(tasks)
        try:
            response = self.get_response(request)
        finally:
            _current_tasks.reset(token)
        _on_close(response, tasks, lambda: _run_then_tidy(tasks))
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        tasks = self._collect(request)
        token = _current_tasks.set(tasks)
        try:
            get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
            response = await get_response(request)
        finally:
            _current_tasks.reset(token)
        loop = asyncio.get_running_loop()
        _on_close(response, tasks, lambda: _hand_to_loop(loop, tasks))
        return response

    @staticmethod
    def _collect(request: HttpRequest) -> BackgroundTasks:
        tasks = BackgroundTasks()
        request.background = tasks
        return tasks


def _on_close(response: HttpResponseBase, tasks: BackgroundTasks, run: Callable[[], None]) -> None:
    """Run the tasks once the server closes the response (after sending it)."""
    if tasks.tasks and not response.streaming and not response.has_header("Content-Length"):
        response.headers["Content-Length"] = str(len(response.content))
    close = response.close

    def close_then_run() -> None:
        try:
            close()
        finally:
            if tasks.tasks:
                run()

    response.close = close_then_run


def _run_then_tidy(tasks: BackgroundTasks) -> None:
    try:
        run_sync(tasks)
    finally:
        # The response's close already tidied the request's database connections;
        # the tasks may have opened new ones in this thread.
        close_old_connections()


def _hand_to_loop(loop: asyncio.AbstractEventLoop, tasks: BackgroundTasks) -> None:
    def spawn() -> None:
        task = loop.create_task(run_async(tasks))
        _running.add(task)
        task.add_done_callback(_running.discard)

    try:
        loop.call_soon_threadsafe(spawn)
    except RuntimeError:  # the server's loop is gone (shutting down)
        logger.warning(
            "the event loop closed before %d after-response tasks could start; they were dropped",
            len(tasks.tasks),
            extra={"dropped": len(tasks.tasks)},
        )
