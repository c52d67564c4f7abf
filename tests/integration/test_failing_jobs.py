"""Jobs that fail, or that no worker can run, never take a worker down and are never lost."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from afterwork import Afterwork, JobStatus

from .app_under_test import build
from .integration_support import (
    APP,
    Processes,
    lines,
    record_of,
    send,
    wait_for_status,
)


@pytest.mark.parametrize("task", ["fail", "exit"])
@pytest.mark.timeout(20)
def test_a_task_that_raises_never_takes_the_worker_down(
    app: Afterwork, procs: Processes, where: str, task: str
) -> None:
    worker = procs.worker()
    bad = send(app, task, where, "boom")
    failed = wait_for_status(app, bad.id, JobStatus.FAILED)
    assert failed.error is not None
    assert failed.error.message == "boom"
    assert lines(Path(where) / "fail.log") == [str(worker.pid)]

    good = send(app, "done", where, "after")

    assert good.result(timeout=10) == worker.pid  # the same process ran the next job
    assert worker.popen.poll() is None
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


@pytest.mark.timeout(30)
def test_a_job_for_a_task_the_worker_lacks_waits_for_a_worker_that_knows_it(
    procs: Processes, db_url: str, where: str
) -> None:
    producer = build(db_url, extra=True)  # knows "late"; the first worker does not
    try:
        old = procs.worker()
        job = send(producer, "late", where, "late")

        old.wait_for_output("does not know the task; putting the job back")
        record = wait_for_status(producer, job.id, JobStatus.SCHEDULED)
        assert record.attempts == 0  # the attempt did not count
        assert record.error is not None
        assert record.error.type == "afterwork.errors.UnknownTask"
        assert "no task named 'late'" in record.error.message
        shown = json.loads(procs.run("status", APP, "--json").stdout)
        assert shown["unknown_tasks"] == {"late": 1}
        old.signal(signal.SIGTERM)
        assert old.wait() == 0

        new = procs.worker(env={"AFTERWORK_TEST_EXTRA": "1"})
        assert job.result(timeout=20) == "late and done"
        assert lines(Path(where) / "late.done") == [str(new.pid)]
        assert record_of(producer, job.id).attempts == 1
    finally:
        producer.close()


@pytest.mark.timeout(30)
def test_a_job_no_worker_knows_is_dead_lettered_after_the_unknown_task_wait(
    procs: Processes, db_url: str, where: str
) -> None:
    producer = build(db_url, extra=True)
    try:
        old = procs.worker("--unknown-task-wait", "1.5")
        job = send(producer, "late", where, "late")

        record = wait_for_status(producer, job.id, JobStatus.FAILED, timeout=15)
        assert record.error is not None
        assert record.error.type == "afterwork.errors.UnknownTask"
        assert "no worker that knows it claimed the job within" in record.error.message
        assert record.finished_at - record.enqueued_at >= 1.5
        old.signal(signal.SIGTERM)
        assert old.wait() == 0

        procs.worker(env={"AFTERWORK_TEST_EXTRA": "1"})
        retried = procs.run("dlq", APP, "retry", job.id)
        assert (retried.returncode, retried.stdout) == (0, "1 job queued again\n")
        assert job.result(timeout=10) == "late and done"
    finally:
        producer.close()
