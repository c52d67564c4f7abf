"""``afterwork worker --processes P``: P worker processes under one parent that restarts the dead.

Each child is a plain ``afterwork worker ... --processes 1``; the parent only
starts, watches and signals them, so a crash in one job can never take the
others down.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

logger = logging.getLogger("afterwork.supervisor")

#: A child that dies sooner than this after starting is restarted with backoff.
_QUICK_DEATH = 5.0
_MAX_BACKOFF = 30.0


class Supervisor:
    """Keeps ``processes`` children running until a signal; with ``burst``, a child
    that exits 0 has drained the queues and is done, and so is the parent once
    every child is."""

    def __init__(
        self,
        child_args: Sequence[str],
        processes: int,
        grace_period: float,
        *,
        burst: bool = False,
    ) -> None:
        self.command = [sys.executable, "-m", "afterwork", *child_args]
        self.processes = processes
        self.grace_period = grace_period
        self.burst = burst
        self._stop = threading.Event()
        self._signals = 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        self._stop.set()
        logger.info("received %s; stopping workers", signal.Signals(signum).name)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        children: list[tuple[subprocess.Popen[bytes], float]] = [
            (self._spawn(), time.monotonic()) for _ in range(self.processes)
        ]
        backoff = [0.5] * self.processes
        done = [False] * self.processes
        while not self._stop.is_set() and not all(done):
            for slot, (child, started) in enumerate(children):
                code = child.poll()
                if code is None or done[slot]:
                    continue
                if code == 0 and self.burst:
                    done[slot] = True
                    continue
                quick = time.monotonic() - started < _QUICK_DEATH
                backoff[slot] = min(backoff[slot] * 2, _MAX_BACKOFF) if quick else 0.5
                logger.warning(
                    "worker process %d exited with %s; restarting in %.1fs",
                    child.pid,
                    code,
                    backoff[slot],
                    extra={"pid": child.pid, "exit_code": code},
                )
                if self._stop.wait(backoff[slot]):
                    break
                children[slot] = (self._spawn(), time.monotonic())
            self._stop.wait(0.5)
        return self._shutdown([c for c, _ in children])

    def _spawn(self) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(self.command)
        logger.info("started worker process %d", child.pid, extra={"pid": child.pid})
        return child

    def _shutdown(self, children: list[subprocess.Popen[bytes]]) -> int:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_period + 5
        for child in children:
            while child.poll() is None and time.monotonic() < deadline:
                if self._signals > 1:  # a second signal: tell children to stop at once
                    child.send_signal(signal.SIGTERM)
                    self._signals = 1
                try:
                    child.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
            if child.poll() is None:
                logger.error("worker process %d did not stop; killing it", child.pid)
                child.kill()
                child.wait()
        return 0
