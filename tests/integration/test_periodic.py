"""Periodic tasks with real processes: workers fire them once per fire, the CLI shows them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from afterwork import Afterwork, JobRecord

from .integration_support import Processes, lines, wait_for

APP = "periodic_app:jobs"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def markers(procs: Processes, where: str) -> Path:
    procs.env["AFTERWORK_TEST_MARKERS"] = where
    return Path(where)


def _all_jobs(app: Afterwork) -> list[JobRecord]:
    return app.portal.call(app.broker.list_jobs(limit=10_000))


def test_two_workers_run_each_fire_of_a_periodic_task_once(
    app: Afterwork, procs: Processes, markers: Path
) -> None:
    first = procs.start("worker", APP, "--concurrency", "2")
    second = procs.start("worker", APP, "--concurrency", "2")
    wait_for(lambda: len(lines(markers / "ticks")) >= 8, what="eight runs of the periodic task")

    keys = [j.unique_key for j in _all_jobs(app) if j.task == "tick"]
    assert len(keys) == len(set(keys)), "a fire was enqueued twice"
    for proc in (first, second):
        assert "scheduler started" in proc.output()


def test_a_worker_without_scheduler_runs_what_a_separate_scheduler_fires(
    procs: Processes, markers: Path
) -> None:
    worker = procs.start("worker", APP, "--no-scheduler")
    procs.start("scheduler", APP)
    wait_for(lambda: len(lines(markers / "ticks")) >= 2, what="runs fired by the scheduler")
    assert set(lines(markers / "ticks")) == {str(worker.pid)}
    assert "scheduler started" not in worker.output()


def test_periodic_and_status_show_the_schedule_and_the_last_run(
    procs: Processes, markers: Path
) -> None:
    procs.start("worker", APP)
    wait_for(lambda: len(lines(markers / "ticks")) >= 2, what="two runs")

    def succeeded() -> dict[str, Any] | None:
        [row] = json.loads(procs.run("periodic", APP, "--json").stdout)
        return row if row["last_status"] == "succeeded" else None

    row = wait_for(succeeded, what="the last run to be reported as succeeded")
    assert row["task"] == "tick"
    assert row["schedule"] == "every 0.2s, overlap"
    assert row["next_fire"] > row["last_fire"]
    table = procs.run("status", APP).stdout
    assert "Periodic" in table
    assert "every 0.2s, overlap" in table


def test_the_scheduler_command_refuses_an_app_without_periodic_tasks(procs: Processes) -> None:
    done = procs.run("scheduler", "app_under_test:jobs")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "Error: app_under_test:jobs has no periodic tasks (@jobs.periodic)"
    ]
