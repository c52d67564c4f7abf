"""Running a call on the event loop at hand: asyncio's own, or trio through anyio.

After-response work runs wherever Starlette does: on asyncio through asyncio
itself (the fast path, measured against Starlette's own classes by
``bench/web.py``), and on trio through anyio, which Starlette already depends
on and which is imported only there. The one check between the two,
:func:`running_asyncio_loop`, costs two C calls. Sync code that must not start
a loop of its own where one runs asks :func:`loop_runs_here`.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from collections.abc import Callable, Coroutine, Generator, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import MissingDependency


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop whose task calls this, or None (trio, even trio hosted on asyncio)."""
    loop = asyncio._get_running_loop()
    if loop is None or asyncio.current_task(loop) is None:
        return None
    return loop


def loop_runs_here() -> bool:
    """Whether an event loop runs in this thread: asyncio's, or trio's (even as asyncio's guest).

    Where one does, sync code cannot run a coroutine to its end in this thread:
    ``asyncio.run`` refuses, and blocking on a loop of its own would stall the
    one that runs.
    """
    if asyncio._get_running_loop() is not None:
        return True
    trio = sys.modules.get("trio")  # not imported: not running
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


@contextmanager
def anyio_needed() -> Iterator[None]:
    """Turn anyio's absence into an error that says what to install."""
    try:
        yield
    except ImportError as exc:
        raise MissingDependency(
            "after-response work outside asyncio (on trio) runs through anyio, which is "
            "not installed: pip install 'afterwork[web]' (or pip install anyio)"
        ) from exc


async def run_in_thread(call: Callable[[], object]) -> None:
    """Run a blocking call in a worker thread, so the event loop goes on meanwhile.

    Cancelled, this returns at once on either loop and the thread is left to
    finish the call on its own (a thread cannot be stopped): so the shutdown's
    drain waits no longer than its grace period for a blocking call.
    """
    loop = running_asyncio_loop()
    if loop is not None:
        await loop.run_in_executor(None, call)
        return
    with anyio_needed():
        import anyio.to_thread
    await anyio.to_thread.run_sync(call, abandon_on_cancel=True)


async def run_in_context(coro: Coroutine[Any, Any, Any], context: contextvars.Context) -> None:
    """Await ``coro`` with every step of it in ``context``.

    On asyncio it gets a task of its own (so ``asyncio.current_task`` is its
    own); elsewhere the caller's task steps it, since trio cannot start a task
    in a given context.
    """
    loop = running_asyncio_loop()
    if loop is None:
        await resume(coro, context)
    else:
        await loop.create_task(coro, context=context)


#: ``resume``'s ``waiting_on`` for a coroutine that has not started.
NOT_STARTED = object()


@types.coroutine
def resume(
    coro: Coroutine[Any, Any, Any], context: contextvars.Context, waiting_on: Any = NOT_STARTED
) -> Generator[Any, Any, None]:
    """Run a coroutine, or the rest of one whose first step has run, each step in ``context``.

    ``waiting_on`` is what that first step yielded. What the coroutine yields
    passes through untouched, so this works under any event loop.
    """
    if waiting_on is NOT_STARTED:
        try:
            waiting_on = context.run(coro.send, None)
        except StopIteration:
            return
    while True:
        try:
            value = yield waiting_on
        except GeneratorExit:
            context.run(coro.close)  # its finally blocks see its context variables
            raise
        except BaseException as exc:  # a cancellation the task delivers
            try:
                waiting_on = context.run(coro.throw, exc)
            except StopIteration:
                return
        else:
            try:
                waiting_on = context.run(coro.send, value)
            except StopIteration:
                return
