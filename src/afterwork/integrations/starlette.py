"""Starlette and FastAPI: the middleware, the ``{"background": [...]}`` shorthand and a dependency.

::

    from afterwork.integrations.starlette import (
        AfterworkMiddleware, background_tasks, with_background,
    )

    app.add_middleware(AfterworkMiddleware, jobs=jobs)

- :func:`with_background` lets an endpoint return ``{"background": [func, *args], ...}``:
  the key is stripped and ``func(*args)`` runs after the response. On a
  Starlette endpoint a returned dict becomes a ``JSONResponse``; on a FastAPI
  one it stays a dict, so ``response_model`` and the signature still apply.
- :func:`background_tasks` is a FastAPI dependency giving the request's
  :class:`~afterwork.BackgroundTasks` (``tasks = Depends(background_tasks)``).

Both work without the middleware too, through the framework's own
``background=``; with it, the work is detached from the request (a client that
disconnects cannot cancel it) and awaited at shutdown.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.background import BackgroundTasks as StarletteBackgroundTasks
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from ..background import BackgroundTask, BackgroundTasks, current_tasks, split_background
from .asgi import AfterworkMiddleware

__all__ = ["AfterworkMiddleware", "background_tasks", "with_background"]

F = TypeVar("F", bound=Callable[..., Any])

#: The hidden keyword a FastAPI endpoint wrapped by ``with_background`` receives:
#: FastAPI fills it with the response's own background tasks.
_FASTAPI_TASKS = "afterwork_response_tasks_"


def _schedule(task: BackgroundTask, response_tasks: StarletteBackgroundTasks | None) -> bool:
    """Hand ``task`` to the request's collection, else to the framework's; False if neither."""
    tasks = current_tasks()
    if tasks is not None:
        tasks.tasks.append(task)
        return True
    if response_tasks is not None:
        response_tasks.add_task(task)
        return True
    return False


def _finish(result: Any, response_tasks: StarletteBackgroundTasks | None) -> Any:
    """FastAPI: strip the shorthand and schedule it; the body stays a dict."""
    if not isinstance(result, dict) or "background" not in result:
        return result
    body, task = split_background(result)
    assert task is not None
    _schedule(task, response_tasks)
    return body


def _respond(result: Any) -> Any:
    """Starlette: a dict becomes a ``JSONResponse``, with the shorthand's task after it."""
    if not isinstance(result, dict):
        return result
    body, task = split_background(result)
    if task is None or _schedule(task, None):
        return JSONResponse(body)
    return JSONResponse(body, background=task)


def _is_starlette_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    # Starlette calls endpoint(request) (a method: (self, request)); FastAPI passes
    # every value by keyword, the hidden one included.
    return _FASTAPI_TASKS not in kwargs and bool(args) and isinstance(args[-1], HTTPConnection)


def _signature(func: Callable[..., Any]) -> inspect.Signature:
    """``func``'s signature plus the hidden keyword FastAPI fills with its background tasks."""
    try:
        signature = inspect.signature(func, eval_str=True)
    except NameError:  # names only known to type checkers: FastAPI resolves the rest
        signature = inspect.signature(func)
    params = list(signature.parameters.values())
    hidden = inspect.Parameter(
        _FASTAPI_TASKS, inspect.Parameter.KEYWORD_ONLY, annotation=StarletteBackgroundTasks
    )
    at = len(params)
    if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD:
        at -= 1
    return signature.replace(parameters=[*params[:at], hidden, *params[at:]])


def with_background(func: F) -> F:
    """Let an endpoint return ``{"background": [callable, *args], ...}`` (Pyxle's shorthand).

    The ``background`` key is stripped from the body and ``callable(*args)``
    runs after the response (positional arguments only; for keyword
    arguments or several tasks use ``request.state.background.add_task``).
    Works on Starlette endpoints (a dict result becomes a ``JSONResponse``)
    and FastAPI path operations (the signature FastAPI reads is kept), sync
    or async.
    """
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_endpoint(*args: Any, **kwargs: Any) -> Any:
            if _is_starlette_call(args, kwargs):
                return _respond(await func(*args, **kwargs))
            response_tasks = kwargs.pop(_FASTAPI_TASKS, None)
            return _finish(await func(*args, **kwargs), response_tasks)

        endpoint: Callable[..., Any] = async_endpoint
    else:

        @functools.wraps(func)
        def sync_endpoint(*args: Any, **kwargs: Any) -> Any:
            if _is_starlette_call(args, kwargs):
                return _respond(func(*args, **kwargs))
            response_tasks = kwargs.pop(_FASTAPI_TASKS, None)
            return _finish(func(*args, **kwargs), response_tasks)

        endpoint = sync_endpoint
    endpoint.__signature__ = _signature(func)  # type: ignore[attr-defined]
    return endpoint  # type: ignore[return-value]


async def background_tasks(
    request: Request, response_tasks: StarletteBackgroundTasks
) -> BackgroundTasks:
    """FastAPI dependency: the request's after-response tasks.

    ::

        @app.post("/signup")
        async def signup(tasks: BackgroundTasks = Depends(background_tasks)) -> dict[str, int]:
            tasks.add_task(send_welcome_email, "ada@example.com")
            return {"id": 1}

    Under :class:`AfterworkMiddleware` this is ``request.state.background``;
    without it, a collection FastAPI runs after the response.
    """
    tasks = current_tasks()
    if tasks is None:
        tasks = BackgroundTasks()
        response_tasks.add_task(tasks)
        request.state.background = tasks
    return tasks
