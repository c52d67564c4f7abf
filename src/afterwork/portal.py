"""Sync access to the async core, without writing anything twice.

``enqueue()`` runs the same coroutine as ``aenqueue()``. A thread with no
running loop (a Flask or Django view, a script) runs it on a private loop of
its own, so a call costs no hop between threads. Code that calls a sync method
from inside a running loop is served by one shared loop on a daemon thread,
since its own loop cannot be re-entered.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _ThreadLoop(threading.local):
    loop: asyncio.AbstractEventLoop | None = None

    def __del__(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.close()


class Portal:
    def __init__(self) -> None:
        self._local = _ThreadLoop()
        self._shared: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is None:
            loop = self._local.loop
            if loop is None or loop.is_closed():
                loop = self._local.loop = asyncio.new_event_loop()
            return loop.run_until_complete(coro)
        shared = self._shared_loop()
        if running is shared:
            coro.close()
            raise RuntimeError("a sync afterwork method was called on afterwork's own loop")
        return asyncio.run_coroutine_threadsafe(coro, shared).result()

    def _shared_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._shared is None or self._shared.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="afterwork-portal", daemon=True
                ).start()
                self._shared = loop
            return self._shared

    def close(self) -> None:
        with self._lock:
            shared, self._shared = self._shared, None
        if shared is not None and not shared.is_closed():
            shared.call_soon_threadsafe(shared.stop)
