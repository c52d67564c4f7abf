"""``afterwork worker --processes 2``: a parent that keeps two worker processes alive."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from afterwork import Afterwork, JobHandle, JobStatus

from .integration_support import (
    Processes,
    alive,
    lines,
    parent_of,
    record_of,
    send,
    wait_for,
)

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc for parent pids")


def run_together(app: Afterwork, where: str, key: str) -> set[int]:
    """Two jobs that can only finish by running at once: on both children (one slot each)."""
    handles = [send(app, "meet", where, key, 2) for _ in range(2)]
    return {handle.result(timeout=15) for handle in handles}


@pytest.mark.timeout(40)
def test_a_supervisor_restarts_a_killed_child_and_stops_all_children_on_sigterm(
    app: Afterwork, procs: Processes, where: str
) -> None:
    supervisor = procs.worker("--processes", "2", "--concurrency", "1", "--grace-period", "5")

    children = run_together(app, where, "first")
    assert len(children) == 2
    assert {parent_of(pid) for pid in children} == {supervisor.pid}

    victim, survivor = sorted(children)
    os.kill(victim, signal.SIGKILL)
    supervisor.wait_for_output(f"worker process {victim} exited with -9; restarting")

    serving = run_together(app, where, "second")
    replacement = serving - {survivor}
    assert survivor in serving
    assert len(replacement) == 1
    assert replacement.isdisjoint(children)
    assert {parent_of(pid) for pid in serving} == {supervisor.pid}

    supervisor.signal(signal.SIGTERM)

    assert supervisor.wait() == 0
    assert not any(alive(pid) for pid in serving)
    wait_for(lambda: not alive(victim), what="the killed child to be gone")


def start_two_long_jobs(app: Afterwork, where: str) -> list[JobHandle[Any]]:
    """One blocking job on each of two children (one slot each), both running."""
    handles = [send(app, "block", where, "long") for _ in range(2)]
    wait_for(lambda: len(lines(Path(where) / "long.started")) == 2, what="both jobs to start")
    return handles


@pytest.mark.timeout(30)
def test_sigterm_to_the_whole_process_group_lets_running_jobs_finish(
    app: Afterwork, procs: Processes, where: str
) -> None:
    supervisor = procs.worker("--processes", "2", "--concurrency", "1", "--grace-period", "20")
    handles = start_two_long_jobs(app, where)

    # What Ctrl+C in a terminal does: the signal goes to every process in the group.
    os.killpg(supervisor.pid, signal.SIGTERM)
    wait_for(
        lambda: supervisor.output().count("SIGTERM: finishing running jobs") == 2,
        what="both children to start their grace period",
    )
    (Path(where) / "long.release").touch()

    assert supervisor.wait(timeout=15) == 0
    for handle in handles:
        finished = record_of(app, handle.id)
        assert (finished.status, finished.attempts) == (JobStatus.SUCCEEDED, 1)
    assert "again: stopping now" not in supervisor.output()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.timeout(30)
def test_a_second_signal_to_the_supervisor_stops_every_child_at_once(
    app: Afterwork, procs: Processes, where: str, signum: signal.Signals
) -> None:
    supervisor = procs.worker("--processes", "2", "--concurrency", "1", "--grace-period", "60")
    handles = start_two_long_jobs(app, where)

    os.killpg(supervisor.pid, signum)
    wait_for(
        lambda: supervisor.output().count("SIGTERM: finishing running jobs") == 2,
        what="both children to start their grace period",
    )
    os.killpg(supervisor.pid, signum)

    assert supervisor.wait(timeout=10) == 0  # far sooner than the grace period
    for handle in handles:
        put_back = record_of(app, handle.id)
        assert (put_back.status, put_back.attempts) == (JobStatus.QUEUED, 0)
    assert supervisor.output().count("SIGTERM again: stopping now") == 2


@pytest.mark.timeout(30)
def test_children_stop_when_their_supervisor_is_killed(
    app: Afterwork, procs: Processes, where: str
) -> None:
    supervisor = procs.worker("--processes", "2", "--concurrency", "1")
    children = run_together(app, where, "first")

    os.kill(supervisor.pid, signal.SIGKILL)

    wait_for(lambda: not any(alive(pid) for pid in children), what="the children to exit")
    assert supervisor.output().count("the supervisor is gone") == 2
