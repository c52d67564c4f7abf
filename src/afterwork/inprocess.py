"""The in-process queue: any callable, run by a worker inside this process.

On ``memory://`` nothing leaves the process, so ``jobs.enqueue(func, ...)``
accepts lambdas, closures and bound methods, keeps the arguments as they are
(nothing is serialized) and runs the call in a copy of the caller's
``contextvars``, so request-scoped context (a request id, a current user)
works inside it. The broker still orders, leases and reports these jobs; this
table only holds what the broker cannot store: the call itself.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import TaskQueueFull

if TYPE_CHECKING:
    from .task import Task


@dataclass(frozen=True, slots=True)
class LocalCall:
    task: Task[Any, Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    context: contextvars.Context


class LocalCalls:
    """Calls waiting for or running on an in-process worker, bounded by ``max_pending``."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._calls: dict[str, LocalCall] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, job_id: str, call: LocalCall) -> None:
        with self._lock:
            if len(self._calls) >= self.max_pending:
                raise TaskQueueFull(
                    f"the in-process queue already holds {self.max_pending} jobs, so "
                    f"{call.task.name} was not queued; the app is overloaded: shed the work, "
                    "raise Afterwork(max_pending=...), or use a durable broker with workers"
                )
            self._calls[job_id] = call

    def get(self, job_id: str) -> LocalCall | None:
        return self._calls.get(job_id)

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._calls.pop(job_id, None)

    def clear(self) -> int:
        with self._lock:
            dropped = len(self._calls)
            self._calls.clear()
            return dropped


def describe_callable(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or type(func).__name__
