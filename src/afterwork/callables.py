"""What afterwork needs to know of a callable it is handed to run later: its name for
logs and errors, and whether calling it gives a coroutine to await."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from inspect import CO_COROUTINE
from types import FunctionType
from typing import Any


def callable_name(func: Callable[..., Any]) -> str:
    """The qualified name of what ``func`` calls, through ``functools.partial``."""
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__qualname__", None) or type(func).__name__


def is_async_callable(func: Callable[..., Any]) -> bool:
    """Whether calling ``func`` gives a coroutine: a coroutine function, a partial of
    one, or an object whose ``__call__`` is one."""
    if type(func) is FunctionType and func.__code__.co_flags & CO_COROUTINE:
        return True  # the common case, without inspect's slower checks
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - async callable objects
    )
