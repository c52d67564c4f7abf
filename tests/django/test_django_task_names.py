"""Django tasks' jobs are named by the task's import path: in the CLI, in logs, to a worker."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

import dj_tasks
import pytest
from dj_support import HERE, finished

from afterwork import UnknownTask
from afterwork.integrations.django import get_backend, start_worker_in_thread
from afterwork.integrations.django._compat import InvalidTask, TaskResultStatus
from afterwork.job import new_job_id


def cli(broker_url: str, *args: str) -> str:
    """Run ``afterwork ARGS`` as a user would, on the test's broker; its stdout."""
    env = {**os.environ, "DJANGO_TEST_BROKER_URL": broker_url}
    done = subprocess.run(
        [sys.executable, "-m", "afterwork", *args],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_cli_shows_a_django_task_by_its_import_path(broker_url: str) -> None:
    result = dj_tasks.send_email.enqueue("ada@example.com")
    assert get_backend().app.job(result.id).info().task == "dj_tasks.send_email"
    status = json.loads(cli(broker_url, "status", "dj_jobs:jobs", "--json"))
    assert [(j["id"], j["task"]) for j in status["next"]] == [(result.id, "dj_tasks.send_email")]
    listed = cli(broker_url, "jobs", "dj_jobs:jobs")
    [row] = [line.split() for line in listed.splitlines() if line.startswith(result.id)]
    assert row[1:3] == ["dj_tasks.send_email", "emails"]
    shown = json.loads(cli(broker_url, "job", "dj_jobs:jobs", result.id, "--json"))
    assert shown["task"] == "dj_tasks.send_email"


def test_the_workers_log_names_the_django_task(
    broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    start_worker_in_thread()
    with caplog.at_level(logging.ERROR, logger="afterwork.worker"):
        result = finished(dj_tasks.fail.enqueue("jammed"))
    [logged] = [r for r in caplog.records if getattr(r, "job_id", None) == result.id]
    assert logged.__dict__["task"] == "dj_tasks.fail"
    assert logged.getMessage().startswith("dj_tasks.fail (job ")


def test_jobs_stored_under_the_earlier_runner_names_still_run(broker_url: str) -> None:
    app = get_backend().app
    calls = [
        ("django.tasks.default", dj_tasks.add, [2, 3]),
        ("django.tasks.default.async", dj_tasks.whoami, ["old"]),
    ]
    ids = []
    for name, task, args in calls:
        job_id = new_job_id()
        envelope = {
            "backend": "default",
            "task": task.module_path,
            "id": job_id,
            "run_after": None,
            "args": args,
            "kwargs": {},
        }
        record = app.tasks[name].prepare(envelope)
        record.id = job_id
        app.enqueue_many([record])
        ids.append(job_id)
    start_worker_in_thread()
    assert finished(dj_tasks.add.get_result(ids[0])).return_value == 5
    whoami = finished(dj_tasks.whoami.get_result(ids[1]))
    assert whoami.return_value == {"label": "old", "attempt": 1, "id": ids[1]}


def test_a_worker_finds_only_the_frameworks_tasks_by_path(broker_url: str) -> None:
    app = get_backend().app
    runner = app.resolve_task("dj_tasks.whoami")
    assert runner.name == "dj_tasks.whoami"
    assert runner.is_async
    assert not app.resolve_task("dj_tasks.add").is_async
    for name in ("os.getcwd", "dj_tasks.nothing_here", "no_such_module.task", "dj_tasks"):
        with pytest.raises(UnknownTask, match="no task named"):
            app.resolve_task(name)


def test_a_task_whose_module_fails_to_import_is_reported_with_the_reason(
    broker_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dj_broken_tasks.py").write_text("import dj_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnknownTask, match="dj_no_such_dependency"):
        get_backend().app.resolve_task("dj_broken_tasks.send")


def test_a_django_task_cannot_share_its_name_with_an_afterwork_task(broker_url: str) -> None:
    app = get_backend().app
    app.task(name="dj_tasks.add")(dj_tasks.add.func)
    with pytest.raises(InvalidTask, match="has that name"):
        dj_tasks.add.enqueue(1, 2)
    assert dj_tasks.send_email.enqueue("x@example.com").status == TaskResultStatus.READY
