"""The ``afterwork`` command run as a user would: as a process, on a real SQLite file."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from afterwork import Afterwork, JobNotFound, JobStatus, cli
from afterwork.workeroptions import WorkerOptions

from .integration_support import (
    APP,
    Processes,
    lines,
    record_of,
    send,
    wait_for,
    wait_for_status,
)


def ok(procs: Processes, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a command that must succeed; its stdout."""
    done = procs.run(*args, env=env)
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
    retried = send(app, "retry_later", where, 7200)
    wait_for_status(app, retried.id, JobStatus.RETRYING)
    busy = send(app, "block", where, "busy")
    wait_for(lambda: lines(Path(where) / "busy.started"), what="the blocking job to start")
    a = send(app, "done", where, "a")
    b = send(app, "done", where, "b", priority=5)
    c = send(app, "done", where, "c")
    elsewhere = send(app, "done", where, "elsewhere", queue="other")
    latest = send(app, "done", where, "latest", delay="3h", priority=50)
    later = send(app, "done", where, "later", delay="1h")

    def busy_worker_listed() -> dict[str, Any] | None:
        data = status(procs)  # a worker reports what it runs at each heartbeat
        return data if [w["running"] for w in data["workers"]] == [1] else None

    data = wait_for(busy_worker_listed, what="status to show the worker running its job")

    assert data["queues"] == {
        "default": {
            "scheduled": 2,
            "queued": 3,
            "running": 1,
            "retrying": 1,
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
    # Ready jobs as workers claim them, then the waiting ones by due time (not priority).
    in_run_order = [b, a, c, elsewhere, later, retried, latest]
    assert [j["id"] for j in data["next"]] == [j.id for j in in_run_order]
    assert [j["status"] for j in data["next"][-3:]] == ["scheduled", "retrying", "scheduled"]
    [seen] = data["workers"]
    assert (seen["pid"], seen["queues"], seen["concurrency"]) == (worker.pid, ["default"], 1)
    assert seen["failed"] == 1

    text = ok(procs, "status", APP)
    assert "dead letters" in text
    assert row(text, "default") == ["default", "2", "3", "1", "1", "1", "0", "0"]
    assert row(text, "other") == ["other", "0", "1", "0", "0", "0", "0", "0"]
    order = [text.index(j.id) for j in in_run_order]
    assert order == sorted(order)
    assert row(text, later.id)[3:5] == ["scheduled", "0"]
    assert row(text, retried.id)[3] == "retrying"
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
    assert row(shown, "unique_key") == ["unique_key", "-"]  # empty fields read "-", not "None"
    assert row(shown, "worker")[1] != "-"  # who ran the last attempt
    assert "None" not in shown
    assert not [line for line in shown.splitlines() if line.startswith("result")]
    text = ok(procs, "job", APP, failed.id, "--json")
    data = json.loads(text)
    assert data["status"] == "failed"
    assert (data["error"]["type"], data["error"]["message"]) == ("ValueError", "boom")
    assert "raise ValueError(message)" in data["error"]["traceback"]
    assert text.count("raise ValueError(message)") == 1  # the traceback appears once
    assert data["result"] is None


@pytest.mark.timeout(20)
def test_job_shows_a_succeeded_jobs_result(app: Afterwork, procs: Processes, where: str) -> None:
    succeeded = send(app, "done", where, "fine")
    nothing = send(app, "record", str(Path(where) / "ran.log"), 1)  # returns None
    burst(procs)
    pid = succeeded.result(timeout=5)

    shown = ok(procs, "job", APP, succeeded.id)
    assert row(shown, "status") == ["status", "succeeded"]
    assert row(shown, "result") == ["result", str(pid)]
    assert json.loads(ok(procs, "job", APP, succeeded.id, "--json"))["result"] == pid
    assert row(ok(procs, "job", APP, nothing.id), "result") == ["result", "null"]


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
def test_dlq_list_takes_a_queue_and_prints_json_like_jobs(
    app: Afterwork, procs: Processes, where: str
) -> None:
    here = send(app, "fail", where, "boom here")
    there = send(app, "fail", where, "boom there", queue="other")
    worker = procs.worker("--burst", "--queues", "default,other")
    assert worker.wait() == 0, worker.output()

    listing = ok(procs, "dlq", APP, "list", "--queue", "other")
    assert row(listing, there.id)[1:4] == ["fail", "other", "failed"]
    assert here.id not in listing
    [listed] = json.loads(ok(procs, "dlq", APP, "list", "--queue", "other", "--json"))
    assert (listed["id"], listed["queue"], listed["status"]) == (there.id, "other", "failed")
    assert (listed["error"]["type"], listed["error"]["message"]) == ("ValueError", "boom there")
    assert len(json.loads(ok(procs, "dlq", APP, "list", "--json"))) == 2

    done = procs.run("dlq", APP, "retry", here.id, "nope-1", "nope-2")
    assert done.returncode == 1
    assert done.stdout == "1 job queued again\n"
    assert done.stderr == "Error: 2 of the ids are not in the dead-letter queue\n"


@pytest.mark.timeout(20)
def test_jobs_lists_scheduled_and_retrying_jobs_in_the_order_they_fall_due(
    app: Afterwork, procs: Processes, where: str
) -> None:
    soon = send(app, "retry_later", where, 600)
    later = send(app, "retry_later", where, 1200, priority=50)
    burst(procs)  # both ask for another attempt: retrying, due in 10 and 20 minutes
    urgent_but_last = send(app, "done", where, "a", delay="3h", priority=50)
    second = send(app, "done", where, "b", delay="1h")
    third = send(app, "done", where, "c", delay="2h", priority=-10)
    first = send(app, "done", where, "d", delay="30m", priority=10)

    def listed(*options: str) -> list[str]:
        return [j["id"] for j in json.loads(ok(procs, "jobs", APP, *options, "--json"))]

    by_due_time = [first.id, second.id, third.id, urgent_but_last.id]
    assert listed("--status", "scheduled") == by_due_time
    assert listed("--status", "scheduled", "--limit", "2") == by_due_time[:2]  # the first due
    assert listed("--status", "retrying") == [soon.id, later.id]
    table = ok(procs, "jobs", APP, "--status", "scheduled")
    order = [table.index(i) for i in by_due_time]
    assert order == sorted(order)


@pytest.mark.timeout(20)
def test_systemd_prints_a_unit_that_restarts_on_failure_and_runs_the_exact_worker_command(
    procs: Processes, tmp_path: Path, db_url: str
) -> None:
    # Without $USER (cron, containers, sudo -i), the unit still names the real user.
    unit = ok(procs, "systemd", APP, "--processes", "2", env={"USER": "", "LOGNAME": ""})

    settings = unit.splitlines()
    assert "Restart=on-failure" in settings
    assert f"WorkingDirectory={tmp_path}" in settings
    assert f"Environment=AFTERWORK_URL={db_url}" in settings
    assert f"User={pwd.getpwuid(os.getuid()).pw_name}" in settings
    # SIGTERM reaches the supervisor alone, which passes it on to its workers once.
    assert "KillMode=mixed" in settings
    assert "TimeoutStopSec=40" in settings  # the default grace period (25s) and a margin
    assert worker_command(unit) == [
        sys.executable,
        "-m",
        "afterwork",
        "worker",
        APP,
        "--queues",
        "default",
        "--concurrency",
        "10",
        "--grace-period",
        "25",
        "--lease",
        "15",
        "--unknown-task-wait",
        "600",
        "--processes",
        "2",
        "--log-level",
        "info",
    ]


@pytest.mark.timeout(20)
def test_systemd_waits_longer_than_the_grace_period_it_passes_on(procs: Processes) -> None:
    unit = ok(
        procs,
        "systemd",
        APP,
        "--grace-period",
        "120.5",
        "--lease",
        "30",
        "--queues",
        "high,low",
        "-c",
        "4",
        "--user",
        "nobody",
    )

    settings = unit.splitlines()
    assert "TimeoutStopSec=136" in settings
    assert "User=nobody" in settings
    assert worker_command(unit)[5:] == [
        "--queues",
        "high,low",
        "--concurrency",
        "4",
        "--grace-period",
        "120.5",
        "--lease",
        "30",
        "--unknown-task-wait",
        "600",
        "--processes",
        "1",
        "--log-level",
        "info",
    ]


@pytest.mark.timeout(20)
def test_systemd_passes_every_worker_option_it_is_given_on_to_the_worker(
    procs: Processes,
) -> None:
    given = [
        "--queues",
        "high,low",
        "--concurrency",
        "3",
        "--grace-period",
        "0.25",
        "--lease",
        "6",
        "--heartbeat",
        "1.5",
        "--unknown-task-wait",
        "0",
        "--burst",
        "--no-scheduler",
        "--processes",
        "4",
        "--log-level",
        "debug",
    ]

    unit = ok(procs, "systemd", APP, *given, "--user", "nobody")

    assert worker_command(unit)[3:] == ["worker", APP, *given]
    # What the unit runs is what was asked for, read back as the worker reads it.
    assert worker_options(worker_command(unit)[4:]) == WorkerOptions(
        queues=["high", "low"],
        concurrency=3,
        grace_period=0.25,
        lease=6,
        heartbeat=1.5,
        unknown_task_wait=0,
        burst=True,
        scheduler=False,
    )


def test_the_command_line_of_any_options_reads_back_as_the_same_options() -> None:
    for options in [
        WorkerOptions(),
        WorkerOptions(queues="a, b", concurrency=1, grace_period=0, lease=0.3, heartbeat=0.1),
        WorkerOptions(lease=1234567.125, unknown_task_wait=1e-06, burst=True, scheduler=False),
    ]:
        assert worker_options(["app:jobs", *options.argv()]) == options


def worker_options(args: list[str]) -> WorkerOptions:
    """The options ``afterwork worker`` reads from ``args``, without running it."""
    with cli.worker.make_context("worker", args) as ctx:
        names = {option.name for option in WorkerOptions.command_line()}
        return WorkerOptions(**{k: v for k, v in ctx.params.items() if k in names})


def worker_command(unit: str) -> list[str]:
    [start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(start.removeprefix("ExecStart="))


REFUSED = {
    "a negative grace period": (
        ["--grace-period", "-1"],
        "--grace-period must be a number of seconds, 0 or more; got '-1'",
    ),
    "a fractional concurrency": (
        ["--concurrency", "2.5"],
        "--concurrency must be a whole number, 1 or more; got '2.5'",
    ),
    "no concurrency": (["-c", "0"], "--concurrency must be a whole number, 1 or more; got '0'"),
    "a zero lease": (["--lease", "0"], "--lease must be a number of seconds, more than 0; got '0'"),
    "a heartbeat that is not a number": (
        ["--heartbeat", "soon"],
        "--heartbeat must be a number of seconds, more than 0; got 'soon'",
    ),
    "a negative unknown-task wait": (
        ["--unknown-task-wait", "-1"],
        "--unknown-task-wait must be a number of seconds, 0 or more; got '-1'",
    ),
    "an endless lease": (
        ["--lease", "inf"],
        "--lease must be a number of seconds, more than 0; got 'inf'",
    ),
    "no queue": (
        ["--queues", ","],
        "--queues must be one or more queue names (non-empty, without commas), as a list or "
        "a comma-separated string; got ','",
    ),
    "no processes": (
        ["--processes", "0"],
        "--processes must be a whole number, 1 or more; got '0'",
    ),
    # click words this one itself, differently across its releases.
    "a misspelt option": (["--concurency", "2"], "No such option"),
}


@pytest.mark.parametrize(("args", "message"), REFUSED.values(), ids=REFUSED)
@pytest.mark.parametrize("command", ["worker", "systemd"])
@pytest.mark.timeout(20)
def test_a_refused_worker_option_names_the_option_and_what_it_accepts(
    procs: Processes, tmp_path: Path, command: str, args: list[str], message: str
) -> None:
    done = procs.run(command, APP, *args)

    assert done.returncode == 2  # click's usage error, before the app is loaded
    assert "Traceback" not in done.stderr
    line = done.stderr.splitlines()[-1]
    assert line.startswith(f"Error: {message}")
    if message == "No such option":
        assert "--concurency" in line
        assert "Did you mean" in line
        assert "--concurrency" in line
    else:
        assert line == f"Error: {message}"
    assert not (tmp_path / "jobs.db").exists()  # nothing was started


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
        "1 of the ids is not in the dead-letter queue",
    ),
    "status, unwritable sqlite path": (
        ["status", APP],
        {"AFTERWORK_URL": NOT_A_DIRECTORY},
        "a-file/jobs.db does not exist",
    ),
    "worker, unwritable sqlite path": (
        ["worker", APP, "--burst"],
        {"AFTERWORK_URL": NOT_A_DIRECTORY},
        "cannot open SQLite database",
    ),
    "systemd for a user who does not exist": (
        ["systemd", APP, "--user", "no-such-user-here"],
        {},
        "no user named 'no-such-user-here' on this machine",
    ),
    "status where no database is": (
        ["status", APP],
        {"AFTERWORK_URL": "sqlite:///{tmp_path}/elsewhere/jobs.db"},
        "jobs.db does not exist. Run the command from the directory the app runs in",
    ),
    "heartbeat longer than lease": (
        ["worker", APP, "--lease", "1", "--heartbeat", "2"],
        {},
        "shorter than the lease",
    ),
    "systemd, heartbeat as long as the lease": (
        ["systemd", APP, "--lease", "2", "--heartbeat", "2"],
        {},
        "worker option heartbeat (2s) must be shorter than the lease (2s)",
    ),
}


@pytest.mark.parametrize(("args", "settings", "message"), ERRORS.values(), ids=ERRORS.keys())
@pytest.mark.timeout(20)
def test_a_command_that_cannot_work_says_why_in_one_line_and_exits_non_zero(
    app: Afterwork,
    procs: Processes,
    tmp_path: Path,
    args: list[str],
    settings: dict[str, str],
    message: str,
) -> None:
    app.connect()  # the test's database exists, empty
    (tmp_path / "a-file").write_text("not a directory")
    env = {name: value.format(tmp_path=tmp_path) for name, value in settings.items()}

    done = procs.run(*args, env=env)

    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    # A worker's log lines (where its jobs are) may come first; the error is one line.
    *logged, line = done.stderr.splitlines()
    assert all(" afterwork." in earlier for earlier in logged)
    assert line.startswith("Error: ")
    assert message in line


BROKEN_APPS = {
    "a bad every=": (
        "from afterwork import Afterwork\njobs = Afterwork()\n\n"
        "@jobs.periodic(every='5 minutes')\ndef tick():\n    pass\n",
        "every '5 minutes' is not understood",
        "line 4",
    ),
    "a bad using(delay=)": (
        "from afterwork import Afterwork\njobs = Afterwork()\n\n@jobs.task\ndef echo(x):\n"
        "    return x\n\nlater = echo.using(delay='soon')\n",
        "delay 'soon' is not understood",
        "line 8",
    ),
    "a missing dependency": (
        "from afterwork import Afterwork\nimport no_such_dependency\n",
        "ModuleNotFoundError: No module named 'no_such_dependency'",
        "line 2",
    ),
    "an error in the app's code": (
        "from afterwork import Afterwork\n\nRATE = 1 / 0\n",
        "ZeroDivisionError: division by zero",
        "line 3",
    ),
    "a syntax error": (
        "from afterwork import Afterwork\njobs = Afterwork(\n",
        "SyntaxError: '(' was never closed",
        "line 2",
    ),
}


@pytest.mark.parametrize(("source", "message", "line"), BROKEN_APPS.values(), ids=BROKEN_APPS)
@pytest.mark.parametrize("command", ["status", "worker"])
def test_an_app_whose_import_fails_is_one_line_with_the_error_and_where_it_is(
    procs: Processes, tmp_path: Path, command: str, source: str, message: str, line: str
) -> None:
    (tmp_path / "broken_app.py").write_text(source)

    done = procs.run(command, "broken_app:jobs")

    assert done.returncode != 0
    [shown] = done.stderr.splitlines()
    assert shown.startswith("Error: cannot load broken_app:jobs: ")
    assert message in shown
    assert shown.endswith(f"(broken_app.py, {line})")


@pytest.mark.timeout(20)
def test_a_job_is_found_by_the_first_digits_of_its_id(
    app: Afterwork, procs: Processes, where: str
) -> None:
    first, second = send(app, "fail", where, "one"), send(app, "fail", where, "two")
    burst(procs)
    shared = os.path.commonprefix([first.id, second.id])  # noqa: RUF071 (ids, not paths)

    shown = ok(procs, "job", APP, first.id[: len(shared) + 1])
    assert shown.splitlines()[0].split() == ["id", first.id]
    ambiguous = procs.run("job", APP, shared)
    assert ambiguous.returncode != 0
    assert f"{shared!r} is the start of more than one job id" in ambiguous.stderr
    assert ok(procs, "dlq", APP, "retry", second.id[: len(shared) + 1]) == "1 job queued again\n"
    assert record_of(app, second.id).status == JobStatus.QUEUED


@pytest.mark.timeout(20)
def test_status_and_jobs_do_not_create_a_database_that_is_not_there(
    procs: Processes, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/nowhere.db"

    for command in (["status", APP], ["jobs", APP], ["dlq", APP, "list"], ["job", APP, "01"]):
        done = procs.run(*command, env={"AFTERWORK_URL": url})
        assert done.returncode != 0
        assert f"SQLite file {tmp_path}/nowhere.db does not exist" in done.stderr
    assert not (tmp_path / "nowhere.db").exists()


@pytest.mark.timeout(20)
def test_a_worker_says_first_where_its_jobs_are_and_warns_of_a_new_file(
    procs: Processes, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"

    worker = procs.worker("--burst", env={"AFTERWORK_URL": url})

    assert worker.wait() == 0
    first, second = worker.output().splitlines()[:2]
    assert first.endswith(f"afterwork worker for {APP}: jobs in SQLite file {tmp_path}/fresh.db")
    assert f"SQLite file {tmp_path}/fresh.db does not exist yet" in second


@pytest.mark.timeout(20)
def test_periodic_shows_the_schedules_before_anything_fired_without_creating_a_database(
    procs: Processes, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/nowhere.db"

    shown = ok(procs, "periodic", "periodic_app:jobs", env={"AFTERWORK_URL": url})

    [header, tick] = shown.splitlines()
    assert header.split()[:3] == ["task", "schedule", "next"]
    assert tick.split()[:4] == ["tick", "every", "0.2s,", "overlap"]
    assert tick.split()[-2:] == ["-", "-"]  # no last fire, no last run
    assert not (tmp_path / "nowhere.db").exists()
