"""``afterwork worker --processes P``: P worker processes under one parent that restarts the dead.

Each child is a plain ``afterwork worker ... --processes 1``; the parent only
starts, watches and signals them, so a crash in one job can never take the
others down.

Children run in sessions of their own, so a signal sent to the parent's
process group (Ctrl+C in a terminal, ``kill -TERM -PGID``) reaches them once,
forwarded by the parent, and not a second time directly: a worker takes a
second signal as "stop now". Each child also holds the read end of a pipe whose
write end only the parent has; if the parent dies without stopping them, the
pipe closes and they stop as on SIGTERM rather than run on unsupervised.
"""

from __future__ import annotations

import contextlib
import logging
import os
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

#: Set in a child's environment: the file descriptor that reaches end-of-file
#: when its supervisor is gone.
SUPERVISOR_FD_ENV = "AFTERWORK_SUPERVISOR_FD"


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
        self._lifeline = -1

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        self._stop.set()
        name = signal.Signals(signum).name
        if self._signals == 1:
            logger.info("received %s; stopping workers", name)
        else:
            logger.warning("received %s again; workers stop at once", name)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # Only this process holds the write end (not inherited), so the children's
        # read end reaches end-of-file exactly when this process is gone.
        self._lifeline, lifeline_writer = os.pipe()
        try:
            return self._supervise()
        finally:
            os.close(self._lifeline)
            os.close(lifeline_writer)

    def _supervise(self) -> int:
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
        child = subprocess.Popen(
            self.command,
            start_new_session=True,
            pass_fds=(self._lifeline,),
            env={**os.environ, SUPERVISOR_FD_ENV: str(self._lifeline)},
        )
        logger.info("started worker process %d", child.pid, extra={"pid": child.pid})
        return child

    def _shutdown(self, children: list[subprocess.Popen[bytes]]) -> int:
        """SIGTERM each child once; once more (stop now) if a second signal came."""
        forwarded = 0
        deadline = time.monotonic() + self.grace_period + 5
        while time.monotonic() < deadline:
            alive = [child for child in children if child.poll() is None]
            if not alive:
                return 0
            wanted = 2 if self._signals > 1 else 1
            while forwarded < wanted:
                for child in alive:
                    child.send_signal(signal.SIGTERM)
                forwarded += 1
            with contextlib.suppress(subprocess.TimeoutExpired):
                alive[0].wait(timeout=0.1)
        for child in children:
            if child.poll() is None:
                logger.error("worker process %d did not stop; killing it", child.pid)
                child.kill()
                child.wait()
        return 0
