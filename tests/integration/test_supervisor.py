"""``afterwork worker --processes 2``: a parent that keeps two worker processes alive."""

from __future__ import annotations

import os
import signal

import pytest

from afterwork import Afterwork

from .integration_support import Processes, alive, parent_of, send, wait_for

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
