"""afterwork as a backend of Django's tasks framework: enqueue, run on its workers, read results."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_settings
import dj_tasks
import django
import httpx
import pytest
from dj_support import HERE, TASKS_LOGGER, Recorder, afinished, finished
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.utils import timezone

from afterwork import JobCancelled, RetryPolicy
from afterwork.integrations.django import (
    AfterworkBackend,
    get_backend,
    start_worker_in_thread,
    stop_worker_in_thread,
)
from afterwork.integrations.django._compat import (
    InvalidTask,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultMismatch,
    TaskResultStatus,
    task_enqueued,
    task_finished,
    task_started,
)
from afterwork.integrations.django.results import job_envelope
from afterwork.integrations.django.running import run_task


def test_the_backend_declares_what_it_supports(broker_url: str) -> None:
    backend = get_backend()
    assert isinstance(backend, AfterworkBackend)
    assert backend.supports_defer
    assert backend.supports_async_task
    assert backend.supports_priority
    assert backend.supports_get_result  # SQLite: readable from any process


def test_a_task_enqueued_from_a_view_runs_on_an_embedded_worker(
    broker_url: str, client: httpx.Client
) -> None:
    start_worker_in_thread(concurrency=2)
    enqueued = client.post("/enqueue", json={"a": 2, "b": 3}).json()
    assert enqueued["status"] == "READY"
    result = finished(dj_tasks.add.get_result(enqueued["id"]))
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.args == [2, 3]
    assert result.errors == []
    assert result.attempts == 1
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.task.func is dj_tasks.add.func
    assert client.get(f"/result/{enqueued['id']}").json() == {
        "status": "SUCCESSFUL",
        "return_value": 5,
        "args": [2, 3],
    }
    enqueued = client.post("/aenqueue", json={"a": 40, "b": 2}).json()
    assert finished(dj_tasks.add.get_result(enqueued["id"])).return_value == 42
    stop_worker_in_thread(grace_period=1)


def test_a_failing_task_reports_its_error(broker_url: str) -> None:
    start_worker_in_thread()
    result = finished(dj_tasks.fail.enqueue("out of paper"))
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 1  # as in Django: no retries unless OPTIONS say so
    [error] = result.errors
    assert error.exception_class is ValueError
    assert "ValueError: out of paper" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        _ = result.return_value


def test_async_tasks_with_their_context(broker_url: str) -> None:
    start_worker_in_thread()
    result = finished(dj_tasks.whoami.enqueue("ada"))
    assert result.return_value == {"label": "ada", "attempt": 1, "id": result.id}


async def test_aenqueue_and_aget_result(broker_url: str) -> None:
    start_worker_in_thread()
    result = await afinished(await dj_tasks.add.aenqueue(20, 22))
    assert result.return_value == 42
    again = await dj_tasks.add.aget_result(result.id)
    assert again.return_value == 42


def test_priority_queue_and_run_after_are_honoured(broker_url: str, tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    low = dj_tasks.note.using(priority=-5).enqueue(str(log), "low")
    high = dj_tasks.note.using(priority=50).enqueue(str(log), "high")
    mail = dj_tasks.send_email.enqueue("ada@example.com")
    later = timezone.now() + timedelta(seconds=0.6)
    deferred = dj_tasks.note.using(run_after=later).enqueue(str(log), "deferred")
    assert mail.task.queue_name == "emails"
    assert mail.task.priority == 10
    assert deferred.task.run_after == later
    start_worker_in_thread(concurrency=1)
    for result in (low, high, mail):
        finished(result)
    assert deferred.status == TaskResultStatus.READY
    assert finished(deferred).finished_at >= later
    assert [line.split()[0] for line in log.read_text().splitlines()] == [
        "high",
        "low",
        "deferred",
    ]
    assert mail.return_value == "sent to ada@example.com"
    assert get_backend().get_result(deferred.id).task.run_after == later


def test_the_frameworks_signals_are_sent(broker_url: str) -> None:
    seen = Recorder()

    def on_enqueued(sender: Any, task_result: TaskResult[Any], **_: Any) -> None:
        seen(("enqueued", task_result.status))

    def on_started(sender: Any, task_result: TaskResult[Any], **_: Any) -> None:
        seen(("started", task_result.status))

    def on_finished(sender: Any, task_result: TaskResult[Any], **_: Any) -> None:
        seen(("finished", task_result.status, task_result.return_value))

    task_enqueued.connect(on_enqueued)
    task_started.connect(on_started)
    task_finished.connect(on_finished)
    try:
        start_worker_in_thread()
        finished(dj_tasks.add.enqueue(1, 1))
        assert seen.wait(3) == [
            ("enqueued", TaskResultStatus.READY),
            ("started", TaskResultStatus.RUNNING),
            ("finished", TaskResultStatus.SUCCESSFUL, 2),
        ]
    finally:
        task_enqueued.disconnect(on_enqueued)
        task_started.disconnect(on_started)
        task_finished.disconnect(on_finished)


def test_bad_input_fails_early(broker_url: str) -> None:
    with pytest.raises(TaskResultDoesNotExist):
        dj_tasks.add.get_result("0" * 32)
    with pytest.raises(InvalidTask, match="Queue"):
        dj_tasks.add.using(queue_name="nowhere")
    with pytest.raises(TypeError):
        dj_tasks.add.enqueue(object(), 1)  # not JSON
    bad = {
        "default": {
            "BACKEND": "afterwork.integrations.django.AfterworkBackend",
            "OPTIONS": {"uri": "x"},
        }
    }
    with override_settings(TASKS=bad), pytest.raises(ImproperlyConfigured, match="uri"):
        get_backend()


def test_the_management_command_runs_jobs_in_another_process(
    broker_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "order.log"
    results = [dj_tasks.note.enqueue(str(log), "one"), dj_tasks.add.enqueue(4, 5)]
    mail = dj_tasks.send_email.enqueue("grace@example.com")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "dj_settings",
        "DJANGO_TEST_BROKER_URL": broker_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-m", "django", "afterwork_worker", "--burst", "--queues", "default"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    for result in results:
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL
    assert results[1].return_value == 9
    worker_pid = log.read_text().split()[1]
    assert worker_pid != str(os.getpid())  # run by the command's process
    assert results[0].attempts == 1
    mail.refresh()
    assert mail.status == TaskResultStatus.READY  # its queue was not served


def test_on_memory_the_embedded_worker_runs_jobs_and_results_stay_in_process() -> None:
    setting = {
        "default": {
            "BACKEND": "afterwork.integrations.django.AfterworkBackend",
            "OPTIONS": {"url": "memory://"},
        }
    }
    with override_settings(TASKS=setting):
        backend = get_backend()
        assert not backend.supports_get_result
        start_worker_in_thread()
        try:
            assert finished(dj_tasks.add.enqueue(1, 2)).return_value == 3
            assert finished(dj_tasks.whoami.enqueue("x")).return_value["attempt"] == 1
        finally:
            stop_worker_in_thread(grace_period=1)


def test_retries_from_options_and_finished_once(tmp_path: Path) -> None:
    setting = dj_settings.tasks_setting(f"sqlite:///{tmp_path}/jobs.db")
    setting["default"]["OPTIONS"]["retries"] = RetryPolicy(max_attempts=2, base_delay=0)
    seen = Recorder()

    def on_finished(sender: Any, task_result: TaskResult[Any], **_: Any) -> None:
        seen((task_result.status, task_result.attempts))

    task_finished.connect(on_finished)
    with override_settings(TASKS=setting):
        start_worker_in_thread()
        try:
            result = finished(dj_tasks.flaky.enqueue(str(tmp_path / "marker")))
            assert result.status == TaskResultStatus.SUCCESSFUL
            assert result.attempts == 2
            assert result.return_value == "second time lucky"
            assert seen.wait(1) == [(TaskResultStatus.SUCCESSFUL, 2)]
        finally:
            task_finished.disconnect(on_finished)
            stop_worker_in_thread(grace_period=1)


def test_cancelled_and_unstorable_results_are_failures(broker_url: str) -> None:
    later = timezone.now() + timedelta(hours=1)
    waiting = dj_tasks.add.using(run_after=later).enqueue(1, 2)
    assert get_backend().app.job(waiting.id).cancel()
    waiting.refresh()
    assert waiting.status == TaskResultStatus.FAILED
    assert waiting.errors[0].exception_class is JobCancelled
    start_worker_in_thread()
    result = finished(dj_tasks.returns_a_set.enqueue())
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is TypeError


def test_a_task_that_calls_sys_exit_fails_and_the_worker_runs_on(broker_url: str) -> None:
    seen = Recorder()

    def on_finished(sender: Any, task_result: TaskResult[Any], **_: Any) -> None:
        seen((task_result.task.name, task_result.status))

    task_finished.connect(on_finished)
    try:
        start_worker_in_thread(concurrency=1)
        for task in (dj_tasks.exits, dj_tasks.aexits):
            result = finished(task.enqueue("bye"))
            assert result.status == TaskResultStatus.FAILED
            [error] = result.errors
            assert error.exception_class is SystemExit
            assert error.traceback.endswith("SystemExit: bye\n")
        assert finished(dj_tasks.add.enqueue(1, 2)).return_value == 3
        assert seen.wait(3) == [
            ("exits", TaskResultStatus.FAILED),
            ("aexits", TaskResultStatus.FAILED),
            ("add", TaskResultStatus.SUCCESSFUL),
        ]
    finally:
        task_finished.disconnect(on_finished)


@pytest.mark.parametrize(
    ("task", "raised"),
    [
        (dj_tasks.fail, ValueError),
        pytest.param(
            dj_tasks.aexits,
            SystemExit,
            marks=pytest.mark.skipif(
                django.VERSION < (6, 1),
                reason="before 6.1, Django's asend_robust calls sync receivers in a task of "
                "their own, outside the handler",
            ),
        ),
    ],
)
def test_the_frameworks_log_of_a_failed_task_carries_its_traceback(
    broker_url: str, caplog: pytest.LogCaptureFixture, task: Any, raised: type[BaseException]
) -> None:
    start_worker_in_thread()
    with caplog.at_level(logging.INFO, logger=TASKS_LOGGER):
        result = finished(task.enqueue("out of ink"))
    logged = [r for r in caplog.records if r.name == TASKS_LOGGER]
    assert [r.levelno for r in logged] == [logging.INFO, logging.ERROR]  # RUNNING, FAILED
    assert all(result.id in r.getMessage() for r in logged)
    assert logged[1].exc_info is not None
    assert logged[1].exc_info[0] is raised


def test_a_keyboard_interrupt_in_a_task_is_not_taken_for_its_failure(broker_url: str) -> None:
    seen = Recorder()

    def on_finished(sender: Any, task_result: TaskResult[Any], **_: Any) -> None:
        seen(task_result.id)

    task_finished.connect(on_finished)
    try:
        result = dj_tasks.interrupted.enqueue()
        app = get_backend().app
        envelope = job_envelope(app, app.job(result.id).info())
        assert envelope is not None
        with pytest.raises(KeyboardInterrupt):
            run_task(envelope)  # as a worker's thread would
        assert seen.calls == []
    finally:
        task_finished.disconnect(on_finished)


def test_a_running_async_task_can_be_cancelled(broker_url: str) -> None:
    started = Recorder()

    def on_started(sender: Any, task_result: TaskResult[Any], **_: Any) -> None:
        started(task_result.id)

    task_started.connect(on_started)
    try:
        start_worker_in_thread()
        result = dj_tasks.waits_forever.enqueue()
        started.wait(1)
        assert get_backend().app.job(result.id).cancel()
        finished(result)
        assert result.status == TaskResultStatus.FAILED
        assert result.errors[0].exception_class is JobCancelled
        assert finished(dj_tasks.add.enqueue(2, 2)).return_value == 4
    finally:
        task_started.disconnect(on_started)


def test_a_result_read_back_equals_the_one_enqueue_returned(broker_url: str) -> None:
    enqueued = dj_tasks.add.using(priority=3).enqueue(1, b=2)
    assert dj_tasks.add.get_result(enqueued.id) == enqueued
    assert get_backend().get_result(enqueued.id) == enqueued
    with pytest.raises(TaskResultMismatch):
        dj_tasks.note.get_result(enqueued.id)
    start_worker_in_thread()
    finished(enqueued)
    assert dj_tasks.add.get_result(enqueued.id) == enqueued
    assert enqueued.return_value == 3


class _Grumpy:
    """A receiver object (no ``__qualname__``, which Django's report of its failure wants)."""

    def __call__(self, **_: Any) -> None:
        raise RuntimeError("grumpy receiver")


def _grumpy_function(**_: Any) -> None:
    raise RuntimeError("grumpy function")


def test_receivers_that_raise_never_fail_the_task(
    broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    receivers = [_grumpy_function, _Grumpy()]
    for receiver in receivers:
        task_started.connect(receiver)
        task_finished.connect(receiver)
    try:
        start_worker_in_thread()
        with caplog.at_level(logging.ERROR, logger="afterwork.django"):
            assert finished(dj_tasks.add.enqueue(1, 1)).return_value == 2
            assert finished(dj_tasks.whoami.enqueue("x")).return_value["label"] == "x"
    finally:
        for receiver in receivers:
            task_started.disconnect(receiver)
            task_finished.disconnect(receiver)
    ours = [r for r in caplog.records if r.name == "afterwork.django"]
    logged = [(r.getMessage().split()[3], vars(r)["task"]) for r in ours]
    assert sorted(logged) == [
        ("task_finished", "dj_tasks.add"),
        ("task_finished", "dj_tasks.whoami"),
        ("task_started", "dj_tasks.add"),
        ("task_started", "dj_tasks.whoami"),
    ]
