"""The app the integration tests run real workers on: ``afterwork worker app_under_test:jobs``.

The worker imports this module with ``tests/integration`` on ``PYTHONPATH`` and
finds its broker in ``AFTERWORK_URL``; the tests build their own app on the
same file with :func:`build`. Tasks tell the test what they are doing through
files in the directory passed as their first argument, so a test waits on an
event it can see rather than on a guess of how long something takes.

``AFTERWORK_TEST_EXTRA=1`` registers one more task, ``late``: a worker without
it meets jobs naming a task it does not know.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from afterwork import Afterwork, Retry

#: How long a blocked task waits for the test to release it before giving up.
BLOCK_LIMIT = 30.0


def _append(path: Path, line: str) -> None:
    """One ``write`` with O_APPEND: lines from many processes never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


async def block(where: str, key: str) -> int:
    """Note ``KEY.started`` (one line per attempt: the pid), wait for ``KEY.release``."""
    folder = Path(where)
    _append(folder / f"{key}.started", str(os.getpid()))
    deadline = time.monotonic() + BLOCK_LIMIT
    while not (folder / f"{key}.release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} was never released")
        await asyncio.sleep(0.02)
    _append(folder / f"{key}.done", str(os.getpid()))
    return os.getpid()


def block_sync(where: str, key: str) -> int:
    """:func:`block` in a worker thread, as a sync task runs."""
    folder = Path(where)
    _append(folder / f"{key}.started", str(os.getpid()))
    deadline = time.monotonic() + BLOCK_LIMIT
    while not (folder / f"{key}.release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} was never released")
        time.sleep(0.02)
    _append(folder / f"{key}.done", str(os.getpid()))
    return os.getpid()


def _count(folder: Path, key: str) -> int:
    return sum(1 for _ in folder.glob(f"{key}.*"))


async def meet(where: str, key: str, parties: int) -> int:
    """Wait until ``parties`` different processes run this task at once (a barrier)."""
    folder = Path(where)
    (folder / f"{key}.{os.getpid()}").touch()
    deadline = time.monotonic() + BLOCK_LIMIT
    while (met := _count(folder, key)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {met} of {parties} met")
        await asyncio.sleep(0.02)
    return os.getpid()


def kill_my_worker(where: str) -> None:
    """Note the pid in ``killer.log``, then SIGKILL the worker process running this job."""
    _append(Path(where) / "killer.log", str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


def record(path: str, n: int) -> None:
    """Append ``n pid`` to ``path``: who ran which job, once per run."""
    _append(Path(path), f"{n} {os.getpid()}")


def fail(where: str, message: str) -> None:
    _append(Path(where) / "fail.log", str(os.getpid()))
    raise ValueError(message)


def exit_(where: str, message: str) -> None:
    """A task that calls ``sys.exit``, as scripts turned into tasks sometimes do."""
    _append(Path(where) / "fail.log", str(os.getpid()))
    sys.exit(message)


def retry_later(where: str, delay: float) -> None:
    """Ask for another attempt after ``delay`` seconds: the job waits as ``retrying``."""
    _append(Path(where) / "retry_later.log", str(os.getpid()))
    raise Retry("not yet", delay=delay)


def done(where: str, key: str) -> int:
    _append(Path(where) / f"{key}.done", str(os.getpid()))
    return os.getpid()


def late(where: str, key: str) -> str:
    """Only known to apps built with ``extra=True``."""
    _append(Path(where) / f"{key}.done", str(os.getpid()))
    return "late and done"


def build(url: str | None = None, *, extra: bool = False) -> Afterwork:
    """An app with every task above; ``url`` defaults to ``AFTERWORK_URL``."""
    app = Afterwork(url)
    app.task(name="block")(block)
    app.task(name="block_sync")(block_sync)
    app.task(name="meet")(meet)
    app.task(name="kill_my_worker", retries=1)(kill_my_worker)
    app.task(name="record")(record)
    app.task(name="fail", retries=0)(fail)
    app.task(name="exit", retries=0)(exit_)
    app.task(name="retry_later", retries=1)(retry_later)
    app.task(name="done")(done)
    if extra:
        app.task(name="late")(late)
    return app


jobs = build(extra=os.environ.get("AFTERWORK_TEST_EXTRA") == "1")
