"""Django tasks' jobs are named by the task's import path: in the CLI, in logs, to a worker."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dj_tasks
import pytest
from dj_support import HERE, finished
from django.conf import settings
from django.test import override_settings

from afterwork import Afterwork, JobFailed, UnknownTask
from afterwork.integrations.django import get_backend, start_worker_in_thread
from afterwork.integrations.django._compat import InvalidTask, TaskResultStatus
from afterwork.job import new_job_id

#: A module that notes each import of itself in the file MARKER, and has a Django task.
RECORDS_ITS_IMPORT = """\
from pathlib import Path

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task

with Path({marker!r}).open("a") as f:
    f.write(__name__ + "\\n")


@task
def shout(word: str) -> str:
    return word.upper()
"""


def write_job(app: Afterwork, name: str, task: str, args: list[Any]) -> str:
    """Store a job named ``name`` that runs Django task ``task``, as anyone who can write
    to the broker could, without importing the task; its id."""
    job_id = new_job_id()
    envelope = {
        "backend": "default",
        "task": task,
        "id": job_id,
        "run_after": None,
        "args": args,
        "kwargs": {},
    }
    record = app.tasks["django.tasks.default"].prepare(envelope)
    record.id = job_id
    record.task = name
    app.enqueue_many([record])
    return job_id


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for the test's modules; they are forgotten afterwards."""
    root = tmp_path / "modules"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [name for name in sys.modules if name.startswith("dj_extra_")]:
        del sys.modules[name]


def installed(*apps: str) -> Any:
    return override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, *apps])


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
    add = write_job(app, "django.tasks.default", dj_tasks.add.module_path, [2, 3])
    whoami = write_job(app, "django.tasks.default.async", dj_tasks.whoami.module_path, ["old"])
    start_worker_in_thread()
    assert finished(dj_tasks.add.get_result(add)).return_value == 5
    result = finished(dj_tasks.whoami.get_result(whoami))
    assert result.return_value == {"label": "old", "attempt": 1, "id": whoami}


def test_a_worker_finds_only_the_frameworks_tasks_by_path(broker_url: str) -> None:
    app = get_backend().app
    runner = app.resolve_task("dj_tasks.whoami")
    assert runner.name == "dj_tasks.whoami"
    assert runner.is_async
    assert not app.resolve_task("dj_tasks.add").is_async
    for name in ("os.getcwd", "dj_tasks.nothing_here", "no_such_module.task", "dj_tasks"):
        with pytest.raises(UnknownTask, match="no task named"):
            app.resolve_task(name)


def test_a_job_cannot_make_a_worker_import_a_module_outside_the_installed_apps(
    broker_url: str, modules: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "imported"
    (modules / "dj_extra_outside.py").write_text(RECORDS_ITS_IMPORT.format(marker=str(marker)))
    app = get_backend().app
    with pytest.raises(UnknownTask, match=r"no task named .*only from the package of an install"):
        app.resolve_task("dj_extra_outside.shout")
    # Named by the job, or by the envelope of a job under an earlier version's runner name.
    unknown = write_job(app, "dj_extra_outside.shout", "dj_extra_outside.shout", ["hi"])
    legacy = write_job(app, "django.tasks.default", "dj_extra_outside.shout", ["hi"])
    start_worker_in_thread(unknown_task_wait=0)  # an unknown task's job fails at once
    with pytest.raises(JobFailed, match="INSTALLED_APPS") as failed:
        app.job(unknown).result(5)
    assert failed.value.error_type == "afterwork.errors.UnknownTask"
    with pytest.raises(JobFailed, match="INSTALLED_APPS") as failed:
        app.job(legacy).result(5)
    assert failed.value.error_type == f"{InvalidTask.__module__}.{InvalidTask.__qualname__}"
    with pytest.raises(InvalidTask, match="INSTALLED_APPS"):  # nor can reading its result
        get_backend().get_result(legacy)
    assert not marker.exists()
    assert "dj_extra_outside" not in sys.modules


def test_a_module_already_imported_is_read_without_its_lazy_getattr(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def load_lazily(name: str) -> Any:  # where a lazy loader would import a submodule
        if not name.startswith("__"):  # (others look up __file__ and the like)
            asked.append(name)
        raise AttributeError(name)

    lazy = types.ModuleType("dj_extra_lazy")
    lazy.__getattr__ = load_lazily  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "dj_extra_lazy", lazy)
    with pytest.raises(UnknownTask, match="no task named"):
        get_backend().app.resolve_task("dj_extra_lazy.submodule")
    assert asked == []


def test_a_worker_imports_a_task_of_an_installed_app_to_run_it(
    broker_url: str, modules: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "imported"
    (modules / "dj_extra_app").mkdir()
    (modules / "dj_extra_app" / "__init__.py").write_text("")
    (modules / "dj_extra_app" / "tasks.py").write_text(
        RECORDS_ITS_IMPORT.format(marker=str(marker))
    )
    with installed("dj_extra_app"):
        assert "dj_extra_app.tasks" not in sys.modules  # the app is, not its tasks
        app = get_backend().app
        job_id = write_job(app, "dj_extra_app.tasks.shout", "dj_extra_app.tasks.shout", ["hi"])
        start_worker_in_thread()
        assert app.job(job_id).result(5) == "HI"
        assert marker.read_text().split() == ["dj_extra_app.tasks"]  # once, by the worker
        result = get_backend().get_result(job_id)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.task.module_path == "dj_extra_app.tasks.shout"


def test_a_task_whose_module_fails_to_import_is_reported_with_the_reason(
    broker_url: str, modules: Path
) -> None:
    (modules / "dj_extra_broken").mkdir()
    (modules / "dj_extra_broken" / "__init__.py").write_text("")
    (modules / "dj_extra_broken" / "tasks.py").write_text("import dj_no_such_dependency\n")
    with installed("dj_extra_broken"), pytest.raises(UnknownTask, match="dj_no_such_dependency"):
        get_backend().app.resolve_task("dj_extra_broken.tasks.send")


def test_a_django_task_cannot_share_its_name_with_an_afterwork_task(broker_url: str) -> None:
    app = get_backend().app
    app.task(name="dj_tasks.add")(dj_tasks.add.func)
    with pytest.raises(InvalidTask, match="has that name"):
        dj_tasks.add.enqueue(1, 2)
    assert dj_tasks.send_email.enqueue("x@example.com").status == TaskResultStatus.READY
