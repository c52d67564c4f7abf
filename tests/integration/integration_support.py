"""Helpers for tests that run real ``afterwork`` processes on a SQLite file.

Every process a test starts gets its own session (process group), its output
goes to a log file in the test's directory, and whatever is still alive when
the test ends is killed, children included. Tests wait on what they can
observe (a file a task wrote, a job's status, a process's exit) with
:func:`wait_for`, never on a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afterwork import Afterwork
from afterwork.brokers import WorkerInfo
from afterwork.defaults import WORKER_STALE_AFTER
from afterwork.job import JobHandle, JobRecord

HERE = Path(__file__).resolve().parent
APP = "app_under_test:jobs"


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "the condition"
) -> Any:
    """Poll ``predicate`` every 20 ms until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@dataclass
class Proc:
    """One started ``afterwork`` process and its combined stdout/stderr log."""

    popen: subprocess.Popen[bytes]
    log: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{' '.join(self.args)} still running after {timeout}s; output:\n{self.output()}"
            ) from None

    def wait_for_output(self, text: str, timeout: float = 10.0) -> None:
        wait_for(lambda: text in self.output(), timeout, f"{text!r} in the output of {self.pid}")


class Processes:
    """Starts ``python -m afterwork ...`` in the test's directory, on the test's database."""

    def __init__(self, folder: Path, env: Mapping[str, str]) -> None:
        self.folder = folder
        self.env = dict(env)
        self.started: list[Proc] = []

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> Proc:
        log = self.folder / f"process-{len(self.started)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "afterwork", *args],
                cwd=self.folder,
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(popen, log, list(args))
        self.started.append(proc)
        return proc

    def worker(self, *options: str, env: Mapping[str, str] | None = None) -> Proc:
        """``afterwork worker`` on the test's app, two jobs at a time unless ``options`` say."""
        return self.start("worker", APP, "--concurrency", "2", *options, env=env)

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 20.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion, with stdout and stderr apart."""
        return subprocess.run(
            [sys.executable, "-m", "afterwork", *args],
            cwd=self.folder,
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def kill_all(self) -> None:
        for proc in self.started:
            # The whole session: a supervisor's children too, even if it is gone.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(5)


def record_of(app: Afterwork, job_id: str) -> JobRecord:
    return app.job(job_id).info()


def wait_for_status(app: Afterwork, job_id: str, status: str, timeout: float = 10.0) -> JobRecord:
    def reached() -> JobRecord | None:
        found = record_of(app, job_id)
        return found if found.status_at(app.clock.now()) == status else None

    try:
        return wait_for(reached, timeout, f"job {job_id} to be {status}")  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {record_of(app, job_id)}") from None


def send(app: Afterwork, task: str, *args: Any, **options: Any) -> JobHandle[Any]:
    """Enqueue a job of the app's task named ``task``; ``options`` go to ``using``."""
    found = app.tasks[task]
    return (found.using(**options) if options else found).enqueue(*args)


def live_workers(app: Afterwork) -> list[WorkerInfo]:
    return app.portal.call(app.broker.workers(WORKER_STALE_AFTER))


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rpartition(")")[2].split()[1])
