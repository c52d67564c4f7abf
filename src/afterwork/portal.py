"""Sync access to the async core, without writing anything twice.

``enqueue()`` runs the same coroutine as ``aenqueue()`` and waits for it.
Other threads share one private event loop in a daemon thread, so a server
that starts a thread per request leaves nothing behind (no loop, connection
or client per thread). The main thread, which lives as long as the process,
runs the coroutine on a loop of its own: a script's calls skip the hop to the
shared loop's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Portal:
    def __init__(self) -> None:
        self._shared: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is None and threading.current_thread() is threading.main_thread():
            if self._main is None or self._main.is_closed():
                self._main = asyncio.new_event_loop()
            return self._main.run_until_complete(coro)
        shared = self._shared_loop()
        if running is shared:
            coro.close()
            raise RuntimeError("a sync afterwork method was called on afterwork's own loop")
        return asyncio.run_coroutine_threadsafe(coro, shared).result()

    def _shared_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._shared
        if loop is not None and not loop.is_closed():
            return loop
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
        main, self._main = self._main, None
        if main is not None and not main.is_closed() and not main.is_running():
            main.close()
