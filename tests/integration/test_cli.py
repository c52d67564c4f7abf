"""The ``afterwork`` command run as a user would: as a process, on a real SQLite file."""

from __future__ import annotations

import json
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from afterwork import Afterwork, JobNotFound, JobStatus

from .integration_support import (
    APP,
    Processes,
    lines,
    record_of,
    send,
    wait_for,
    wait_for_status,
)


def ok(procs: Processes, *args: str) -> str:
    """Run a command that must succeed; its stdout."""
    done = procs.run(*args)
    assert done.returncode == 0, f"afterwork {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def status(procs: Processes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(procs, "status", APP, "--json"))
    return data


def row(table: str, first_cell: str) -> list[str]:
    """The cells of the table row that starts with ``first_cell``."""
    [found] = [line.split() for line in table.splitlines() if line.split()[:1] == [first_cell]]
    return found


def burst(procs: Processes) -> None:
    """Run every ready job with a worker that exits when done."""
    worker = procs.worker("--burst")
    assert worker.wait() == 0, worker.output()


@pytest.mark.timeout(30)
def test_status_shows_counts_per_queue_the_next_jobs_in_run_order_and_live_workers(
    app: Afterwork, procs: Processes, where: str
) -> None:
    worker = procs.worker("--concurrency", "1", "--lease", "1")
    failed = send(app, "fail", where, "boom")
    wait_for_status(app, failed.id, JobStatus.FAILED)
    busy = send(app, "block", where, "busy")
    wait_for(lambda: lines(Path(where) / "busy.started"), what="the blocking job to start")
    a = send(app, "done", where, "a")
    b = send(app, "done", where, "b", priority=5)
    c = send(app, "done", where, "c")
    elsewhere = send(app, "done", where, "elsewhere", queue="other")
    later = send(app, "done", where, "later", delay="1h")

    def busy_worker_listed() -> dict[str, Any] | None:
        data = status(procs)  # a worker reports what it runs at each heartbeat
        return data if [w["running"] for w in data["workers"]] == [1] else None

    data = wait_for(busy_worker_listed, what="status to show the worker running its job")

    assert data["queues"] == {
        "default": {
            "scheduled": 1,
            "queued": 3,
            "running": 1,
            "retrying": 0,
            "failed": 1,
            "succeeded": 0,
            "cancelled": 0,
        },
        "other": {
            "scheduled": 0,
            "queued": 1,
            "running": 0,
            "retrying": 0,
            "failed": 0,
            "succeeded": 0,
            "cancelled": 0,
        },
    }
    assert [j["id"] for j in data["next"]] == [b.id, a.id, c.id, elsewhere.id]
    [seen] = data["workers"]
    assert (seen["pid"], seen["queues"], seen["concurrency"]) == (worker.pid, ["default"], 1)
    assert seen["failed"] == 1

    text = ok(procs, "status", APP)
    assert "dead letters" in text
    assert row(text, "default") == ["default", "1", "3", "1", "0", "1", "0", "0"]
    assert row(text, "other") == ["other", "0", "1", "0", "0", "0", "0", "0"]
    order = [text.index(j.id) for j in (b, a, c, elsewhere)]
    assert order == sorted(order)
    assert later.id not in text  # not due: not among the next to run
    assert row(text, seen["id"])[1:4] == ["default", "1", "1"]

    (Path(where) / "busy.release").touch()
    wait_for_status(app, busy.id, JobStatus.SUCCEEDED)
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert "no live workers" in ok(procs, "status", APP)


@pytest.mark.timeout(20)
def test_jobs_lists_failed_jobs_and_job_shows_the_error_and_its_traceback(
    app: Afterwork, procs: Processes, where: str
) -> None:
    failed = send(app, "fail", where, "boom")
    succeeded = send(app, "done", where, "fine")
    burst(procs)

    listing = ok(procs, "jobs", APP, "--status", "failed")
    assert failed.id in listing
    assert succeeded.id not in listing
    assert row(listing, failed.id)[1:5] == ["fail", "default", "failed", "1/1"]
    assert row(listing, failed.id)[-1] == "ValueError"
    [listed] = json.loads(ok(procs, "jobs", APP, "--status", "failed", "--json"))
    assert (listed["id"], listed["error"]["type"]) == (failed.id, "ValueError")

    shown = ok(procs, "job", APP, failed.id)
    assert "error         ValueError: boom" in shown
    assert "Traceback (most recent call last):" in shown
    assert "raise ValueError(message)" in shown
    data = json.loads(ok(procs, "job", APP, failed.id, "--json"))
    assert data["status"] == "failed"
    assert "raise ValueError(message)" in data["traceback"]


@pytest.mark.timeout(30)
def test_dlq_lists_retries_one_or_all_and_purges_dead_letters(
    app: Afterwork, procs: Processes, where: str
) -> None:
    dead = [send(app, "fail", where, f"boom {n}") for n in range(3)]
    burst(procs)
    ids = [job.id for job in dead]

    listing = ok(procs, "dlq", APP, "list")
    assert all(row(listing, i)[3] == "failed" for i in ids)

    assert ok(procs, "dlq", APP, "retry", ids[0]) == "1 job queued again\n"
    again = record_of(app, ids[0])
    assert (again.status, again.attempts) == (JobStatus.QUEUED, 0)
    assert ok(procs, "dlq", APP, "retry", "--all") == "2 jobs queued again\n"
    assert {record_of(app, i).status for i in ids} == {JobStatus.QUEUED}

    burst(procs)  # they fail again, back into the dead-letter queue
    assert {record_of(app, i).status for i in ids} == {JobStatus.FAILED}
    assert len(lines(Path(where) / "fail.log")) == 6

    assert ok(procs, "dlq", APP, "purge", "--all") == "3 jobs purged\n"
    assert ok(procs, "dlq", APP, "list") == "no jobs\n"
    with pytest.raises(JobNotFound):
        record_of(app, ids[0])

    both = procs.run("dlq", APP, "retry", "--all", ids[0])
    assert both.returncode == 2
    assert "give the job ids to retry, or --all (not both)" in both.stderr


@pytest.mark.timeout(20)
def test_systemd_prints_a_unit_that_restarts_on_failure_and_runs_the_exact_worker_command(
    procs: Processes, tmp_path: Path, db_url: str
) -> None:
    unit = ok(procs, "systemd", APP, "--processes", "2")

    assert "Restart=on-failure" in unit.splitlines()
    assert f"WorkingDirectory={tmp_path}" in unit.splitlines()
    assert f"Environment=AFTERWORK_URL={db_url}" in unit.splitlines()
    [start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    command = shlex.split(start.removeprefix("ExecStart="))
    assert command == [
        sys.executable,
        "-m",
        "afterwork",
        "worker",
        APP,
        "--queues",
        "default",
        "--concurrency",
        "10",
        "--processes",
        "2",
    ]


NOT_A_DIRECTORY = "sqlite:///{tmp_path}/a-file/jobs.db"

ERRORS = {
    "module not found": (["status", "no_such_module:jobs"], {}, "cannot import module"),
    "no such attribute": (["status", "app_under_test:nothing"], {}, "has no attribute"),
    "worker, module not found": (["worker", "no_such_module:jobs"], {}, "cannot import module"),
    "supervisor, module not found": (
        ["worker", "no_such_module:jobs", "--processes", "2"],
        {},
        "cannot import module",
    ),
    "unknown scheme": (["status", APP], {"AFTERWORK_URL": "nope://x"}, "cannot use broker URL"),
    "malformed sqlite url": (
        ["worker", APP],
        {"AFTERWORK_URL": "sqlite://host/jobs.db"},
        "invalid SQLite URL",
    ),
    "unknown job id": (["job", APP, "0123"], {}, "no job with id 0123"),
    "retry of an unknown id": (
        ["dlq", APP, "retry", "0123"],
        {},
        "1 of the ids are not in the dead-letter queue",
    ),
    "status, unwritable sqlite path": (
        ["status", APP],
        {"AFTERWORK_URL": NOT_A_DIRECTORY},
        "cannot open SQLite database",
    ),
    "worker, unwritable sqlite path": (
        ["worker", APP, "--burst"],
        {"AFTERWORK_URL": NOT_A_DIRECTORY},
        "cannot open SQLite database",
    ),
    "heartbeat longer than lease": (
        ["worker", APP, "--lease", "1", "--heartbeat", "2"],
        {},
        "shorter than the lease",
    ),
}


@pytest.mark.parametrize(("args", "settings", "message"), ERRORS.values(), ids=ERRORS.keys())
@pytest.mark.timeout(20)
def test_a_command_that_cannot_work_says_why_in_one_line_and_exits_non_zero(
    procs: Processes, tmp_path: Path, args: list[str], settings: dict[str, str], message: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    env = {name: value.format(tmp_path=tmp_path) for name, value in settings.items()}

    done = procs.run(*args, env=env)

    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("Error: ")
    assert message in line
