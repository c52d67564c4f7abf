"""Helpers for the Django tests (a module of its own: test modules cannot import a conftest)."""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from pathlib import Path
from typing import Any

from afterwork import JobCancelled, JobFailed
from afterwork.integrations.django import get_backend

HERE = Path(__file__).parent

#: Where the framework logs its tasks: Django 6's django.tasks, or the backport's.
TASKS_LOGGER = "django.tasks" if importlib.util.find_spec("django.tasks") else "django_tasks"


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


def finished(result: Any, timeout: float = 5) -> Any:
    """``result`` (a framework ``TaskResult``) refreshed once its job has finished for good."""
    job = get_backend(result.backend).app.job(result.id)
    with contextlib.suppress(JobFailed, JobCancelled):
        job.result(timeout)  # waits on the broker; ResultTimeout if it does not finish
    result.refresh()
    assert result.is_finished, f"{result.id} is still {result.status}"
    return result


async def afinished(result: Any, timeout: float = 5) -> Any:
    job = get_backend(result.backend).app.job(result.id)
    with contextlib.suppress(JobFailed, JobCancelled):
        await job.aresult(timeout)
    await result.arefresh()
    assert result.is_finished, f"{result.id} is still {result.status}"
    return result
