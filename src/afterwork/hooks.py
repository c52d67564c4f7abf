"""Hooks: code that runs at fixed points of a job's life, for metrics, tracing and context.

Subclass :class:`Hook`, override the methods you need and pass instances to
``Afterwork(hooks=[...])``. A hook that raises is logged and skipped; it never
breaks an enqueue, a job or a worker.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import ErrorInfo, JobRecord
    from .worker import Worker

logger = logging.getLogger("afterwork.hooks")


class Hook:
    """Base class whose methods do nothing; each says when it runs."""

    def before_enqueue(self, job: JobRecord) -> None:
        """Before a job is handed to the broker, in the enqueuing process."""

    def after_enqueue(self, job: JobRecord) -> None:
        """After the broker has stored the job (or found its unique twin)."""

    def before_run(self, worker: Worker, job: JobRecord) -> None:
        """In the worker, just before the task function is called."""

    def after_run(
        self, worker: Worker, job: JobRecord, result: Any, error: BaseException | None
    ) -> None:
        """In the worker, after the task function returned (``error`` is ``None``), raised
        (``error`` is the exception) or was stopped: then ``error`` is an
        :class:`asyncio.CancelledError` whose message is ``"cancelled"`` (the job was
        cancelled or its lease lost) or ``"shutdown"`` (a stopping worker put it back)."""

    def on_retry(self, worker: Worker, job: JobRecord, error: ErrorInfo, delay: float) -> None:
        """A failed attempt will be retried after ``delay`` seconds."""

    def on_dead_letter(self, worker: Worker, job: JobRecord, error: ErrorInfo) -> None:
        """A job spent its attempts (or cannot run at all) and went to the dead-letter queue."""

    def on_worker_start(self, worker: Worker) -> None:
        """A worker connected and is about to claim jobs."""

    def on_worker_stop(self, worker: Worker) -> None:
        """A worker has put back or finished its jobs and is about to exit."""


_HOOK_POINTS = [name for name in vars(Hook) if not name.startswith("_")]


class HookRunner:
    """Calls every hook that overrides a point; precomputed so an unused point costs nothing."""

    def __init__(self, hooks: list[Hook]) -> None:
        self.hooks = list(hooks)
        self._by_point: dict[str, list[Any]] = {
            point: [
                getattr(h, point)
                for h in self.hooks
                if getattr(type(h), point) is not vars(Hook)[point]
            ]
            for point in _HOOK_POINTS
        }

    def active(self, point: str) -> bool:
        return bool(self._by_point[point])

    def emit(self, point: str, *args: Any) -> None:
        for method in self._by_point[point]:
            try:
                method(*args)
            except Exception as exc:
                logger.exception(
                    "hook %s.%s failed: %s",
                    type(method.__self__).__name__,
                    point,
                    exc,
                    extra={"hook": point, "error_type": type(exc).__name__},
                )
