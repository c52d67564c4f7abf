"""A wake-up that waiters on any event loop or thread can wait for.

Brokers pulse one when a job becomes ready (``reserve`` waits on it) and one
when a job finishes (``wait`` waits on it), so waiting in this process costs no
polling whatever loop or thread the waiter runs on.
"""

from __future__ import annotations

import asyncio
import threading


class Notifier:
    """A wake-up that waiters on any event loop or thread can wait for.

    Waiters read :attr:`generation` before they look for work and pass it to
    :meth:`wait`, so a notification between the look and the wait is not lost.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def generation(self) -> int:
        return self._generation

    def notify(self) -> None:
        with self._lock:
            self._generation += 1
            waiters, self._waiters = self._waiters, []
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, future in waiters:
            if loop is current:
                _wake(future)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_wake, future)

    async def wait(self, generation: int, timeout: float) -> bool:
        """Wait until notified after ``generation`` or ``timeout`` passes; True if notified."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._generation != generation:
                return True
            self._waiters.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                if (loop, future) in self._waiters:
                    self._waiters.remove((loop, future))


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
