"""Django tasks for the tests (module level: a worker imports them by path)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

try:
    from django.tasks import TaskContext, task
except ImportError:
    from django_tasks import TaskContext, task  # type: ignore[no-redef]


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def fail(message: str) -> None:
    raise ValueError(message)


@task(takes_context=True)
async def whoami(context: TaskContext, label: str) -> dict[str, Any]:
    return {"label": label, "attempt": context.attempt, "id": context.task_result.id}


@task
def note(path: str, label: str) -> str:
    """Append ``label`` and the worker's pid to ``path``: shows order and process."""
    with Path(path).open("a") as f:
        f.write(f"{label} {os.getpid()}\n")
    return label


@task(queue_name="emails", priority=10)
def send_email(address: str) -> str:
    return f"sent to {address}"


@task
def flaky(path: str) -> str:
    """Fails on its first attempt (it leaves ``path`` behind), then succeeds."""
    marker = Path(path)
    if not marker.exists():
        marker.write_text("failed once")
        raise ConnectionError("the first attempt fails")
    return "second time lucky"


@task
def returns_a_set() -> set[int]:
    return {1, 2}


@task
def exits(message: str) -> None:
    sys.exit(message)


@task
async def aexits(message: str) -> None:
    sys.exit(message)


@task
def interrupted() -> None:
    raise KeyboardInterrupt


@task
async def waits_forever() -> None:
    await asyncio.Event().wait()
