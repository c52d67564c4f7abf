"""A worker process killed with SIGKILL: its job waits out the lease, then runs elsewhere."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from afterwork import Afterwork, JobStatus

from .integration_support import (
    Proc,
    Processes,
    lines,
    record_of,
    send,
    wait_for,
    wait_for_status,
)

LEASE = "1"


@pytest.mark.timeout(30)
def test_a_job_whose_worker_is_killed_runs_again_on_another_worker_once_its_lease_runs_out(
    app: Afterwork, procs: Processes, where: str
) -> None:
    started = Path(where) / "job.started"
    first = procs.worker("--lease", LEASE)
    job = send(app, "block", where, "job")
    wait_for(lambda: lines(started) == [str(first.pid)], what="the first worker to start the job")

    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    held = record_of(app, job.id)
    assert held.status == JobStatus.RUNNING  # still leased to the dead worker
    assert held.lease_until is not None

    (Path(where) / "job.release").touch()
    second = procs.worker("--lease", LEASE)
    done = wait_for_status(app, job.id, JobStatus.SUCCEEDED, timeout=15)

    assert done.attempts == 2
    assert lines(started) == [str(first.pid), str(second.pid)]
    assert done.started_at is not None
    assert done.started_at >= held.lease_until  # not before the lease ran out
    assert app.job(job.id).result(timeout=1) == second.pid


@pytest.mark.timeout(40)
def test_a_job_that_keeps_killing_its_worker_ends_in_the_dead_letter_queue_as_worker_lost(
    app: Afterwork, procs: Processes, where: str
) -> None:
    killer_log = Path(where) / "killer.log"
    job = send(app, "kill_my_worker", where)  # retries=1: two attempts in all

    def failed() -> bool:
        return record_of(app, job.id).status == JobStatus.FAILED

    started: list[Proc] = []
    while not failed():
        assert len(started) < 4, f"the job keeps running: {lines(killer_log)}"
        # A fresh worker each time one dies; it puts the expired job back itself.
        worker = procs.worker("--lease", LEASE)
        started.append(worker)
        wait_for(
            lambda w=worker: w.popen.poll() is not None or failed(),  # type: ignore[misc]
            timeout=10,
            what="the worker to die or the job to be dead-lettered",
        )

    # Two attempts killed two workers; the third worker only dead-lettered the job.
    assert len(started) == 3
    assert [w.popen.returncode for w in started[:2]] == [-signal.SIGKILL] * 2
    assert lines(killer_log) == [str(w.pid) for w in started[:2]]
    assert started[-1].popen.poll() is None

    record = record_of(app, job.id)
    assert record.attempts == 2
    assert record.error is not None
    assert record.error.type == "afterwork.errors.WorkerLost"
    assert "attempt 2 of 2" in record.error.message
    dead_letters = app.portal.call(app.broker.list_jobs(status=JobStatus.FAILED))
    assert [j.id for j in dead_letters] == [job.id]

    # The worker that dead-lettered it is unharmed and stops cleanly.
    started[-1].signal(signal.SIGTERM)
    assert started[-1].wait() == 0
