"""Stopping a worker process with signals, and ``--burst`` runs that stop by themselves."""

from __future__ import annotations

import datetime as dt
import signal
from pathlib import Path

import pytest

from afterwork import Afterwork, JobStatus

from .integration_support import (
    Processes,
    lines,
    record_of,
    send,
    wait_for,
)


@pytest.mark.timeout(20)
def test_on_sigterm_a_worker_stops_claiming_lets_the_running_job_finish_and_exits_0(
    app: Afterwork, procs: Processes, where: str
) -> None:
    worker = procs.worker("--concurrency", "1", "--grace-period", "10")
    running = send(app, "block", where, "running")
    wait_for(lambda: lines(Path(where) / "running.started"), what="the job to start")
    waiting = send(app, "done", where, "waiting")  # no free slot: it waits its turn

    worker.signal(signal.SIGTERM)
    worker.wait_for_output("SIGTERM: finishing running jobs")
    (Path(where) / "running.release").touch()  # the slot frees up: a stopping worker keeps it

    assert worker.wait() == 0
    finished = record_of(app, running.id)
    assert finished.status == JobStatus.SUCCEEDED
    assert finished.attempts == 1
    left = record_of(app, waiting.id)
    assert left.status == JobStatus.QUEUED
    assert left.attempts == 0
    assert not (Path(where) / "waiting.done").exists()


@pytest.mark.parametrize("task", ["block", "block_sync"])
@pytest.mark.timeout(20)
def test_a_job_longer_than_the_grace_period_is_put_back_without_counting_the_attempt(
    app: Afterwork, procs: Processes, where: str, task: str
) -> None:
    worker = procs.worker("--grace-period", "0.3")
    job = send(app, task, where, "long")
    wait_for(lambda: lines(Path(where) / "long.started"), what="the job to start")

    worker.signal(signal.SIGTERM)

    assert worker.wait() == 0
    record = record_of(app, job.id)
    assert record.status == JobStatus.QUEUED
    assert record.attempts == 0
    assert record.worker is None
    assert "putting 1 unfinished jobs back" in worker.output()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.timeout(20)
def test_a_second_signal_stops_the_worker_at_once_and_still_puts_the_job_back(
    app: Afterwork, procs: Processes, where: str, signum: signal.Signals
) -> None:
    worker = procs.worker("--grace-period", "60")
    job = send(app, "block", where, "long")
    wait_for(lambda: lines(Path(where) / "long.started"), what="the job to start")

    worker.signal(signum)
    worker.wait_for_output(f"{signum.name}: finishing running jobs")
    worker.signal(signum)

    assert worker.wait(timeout=5) == 0  # far sooner than the grace period
    record = record_of(app, job.id)
    assert record.status == JobStatus.QUEUED
    assert record.attempts == 0
    assert f"{signum.name} again: stopping now" in worker.output()


@pytest.mark.timeout(20)
def test_a_burst_worker_drains_every_ready_job_then_exits_0(
    app: Afterwork, procs: Processes, where: str, tmp_path: Path
) -> None:
    log = tmp_path / "ran.log"
    ready = [send(app, "record", str(log), n) for n in range(20)]
    later = send(app, "done", where, "later", delay="1h")

    worker = procs.worker("--burst", "--concurrency", "4")

    assert worker.wait() == 0
    assert sorted(int(line.split()[0]) for line in lines(log)) == list(range(20))
    assert {record_of(app, j.id).status for j in ready} == {JobStatus.SUCCEEDED}
    assert record_of(app, later.id).status == JobStatus.SCHEDULED  # not ready: left alone


@pytest.mark.parametrize("processes", ["1", "2"])
@pytest.mark.timeout(20)
def test_a_burst_worker_says_how_many_jobs_it_left_for_a_later_time(
    app: Afterwork, procs: Processes, where: str, processes: str
) -> None:
    retried = send(app, "retry_later", where, 3600)
    send(app, "done", where, "later", delay="2h")
    send(app, "done", where, "elsewhere", delay="1h", queue="other")  # not this worker's queue

    worker = procs.worker("--burst", "--processes", processes)

    assert worker.wait() == 0, worker.output()
    assert record_of(app, retried.id).status == JobStatus.RETRYING
    due = dt.datetime.fromtimestamp(record_of(app, retried.id).run_at)
    [line] = [line for line in worker.output().splitlines() if "left for a later run" in line]
    assert line.endswith(
        "2 jobs left for a later run (1 scheduled, 1 retrying); "
        f"the first is due at {due:%Y-%m-%d %H:%M:%S} {due.astimezone():%Z}"
    )


@pytest.mark.timeout(20)
def test_a_burst_worker_that_leaves_nothing_for_later_does_not_mention_it(
    app: Afterwork, procs: Processes, where: str
) -> None:
    send(app, "done", where, "now")

    worker = procs.worker("--burst")

    assert worker.wait() == 0, worker.output()
    assert "left for a later run" not in worker.output()


@pytest.mark.timeout(20)
def test_a_burst_run_with_two_processes_drains_the_queue_and_exits_0(
    app: Afterwork, procs: Processes, tmp_path: Path
) -> None:
    log = tmp_path / "ran.log"
    ready = [send(app, "record", str(log), n) for n in range(20)]

    supervisor = procs.worker("--burst", "--processes", "2")

    assert supervisor.wait(timeout=10) == 0
    assert sorted(int(line.split()[0]) for line in lines(log)) == list(range(20))
    assert {record_of(app, j.id).status for j in ready} == {JobStatus.SUCCEEDED}
