"""Helpers for the Django tests (a module of its own: test modules cannot import a conftest)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


class Recorder:
    """Collects calls from any thread; ``wait(n)`` blocks until ``n`` have arrived."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, *args: Any) -> None:
        with self._cond:
            self.calls.append(args[0] if len(args) == 1 else args)
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = 5) -> list[Any]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.calls) >= n, timeout), self.calls
            return list(self.calls)
