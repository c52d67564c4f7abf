"""The app: where jobs go, which tasks exist, and ad hoc jobs from the app's own package."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from afterwork import (
    Afterwork,
    ConfigurationError,
    InvalidURL,
    JobStatus,
    TaskConfigurationError,
    UnknownTask,
    Worker,
)
from afterwork.defaults import DEFAULT_URL

calls: list[tuple[str, tuple[object, ...]]] = []


def record_call(*args: object) -> str:
    calls.append(("record_call", args))
    return "recorded"


async def arecord_call(*args: object) -> str:
    calls.append(("arecord_call", args))
    return "arecorded"


class Reports:
    @staticmethod
    def build(month: str) -> str:
        return f"report {month}"


@pytest.fixture(autouse=True)
def no_calls() -> None:
    calls.clear()


# -- settings -------------------------------------------------------------------------------


def test_the_url_defaults_to_the_environment_then_to_a_sqlite_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AFTERWORK_URL", "memory://")
    assert Afterwork().url == "memory://"
    assert Afterwork("sqlite:///explicit.db").url == "sqlite:///explicit.db"
    monkeypatch.delenv("AFTERWORK_URL")
    assert Afterwork().url == DEFAULT_URL == "sqlite:///afterwork.db"


@pytest.mark.parametrize("url", ["nope://x", "localhost:6379", "", "http://example.com"])
def test_a_url_with_an_unknown_scheme_fails_when_the_app_is_made(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFTERWORK_URL", url or "bogus")
    with pytest.raises(InvalidURL, match="scheme must be one of"):
        Afterwork(url or None)


@pytest.mark.parametrize("url", ["", "  "])
def test_an_empty_url_is_an_error_not_the_default(url: str) -> None:
    with pytest.raises(ConfigurationError, match="the broker URL is empty"):
        Afterwork(url)


def test_the_unknown_scheme_error_lists_only_schemes_that_work() -> None:
    with pytest.raises(InvalidURL) as raised:
        Afterwork("nope://x")

    listed = str(raised.value).rpartition("one of ")[2].split(", ")
    assert listed == ["sqlite://", "memory://", "redis://", "rediss://", "unix://"]
    for url in listed:
        Afterwork(url + ("/tmp/x.db" if url.startswith("sqlite") else "localhost/0"))


@pytest.mark.parametrize(
    ("url", "example"), [("sqlite:jobs.db", "sqlite:///jobs.db"), ("redis:host", "redis://")]
)
def test_a_url_missing_its_slashes_says_how_it_starts(url: str, example: str) -> None:
    with pytest.raises(InvalidURL, match=f"starts with .*{example}"):
        Afterwork(url)


@pytest.mark.parametrize("size", [0, -1, 1.5, "1MB", True])
def test_max_payload_size_must_be_a_positive_number_of_bytes(size: object) -> None:
    with pytest.raises(ConfigurationError, match="max_payload_size"):
        Afterwork("memory://", max_payload_size=size)  # type: ignore[arg-type]


def test_a_bad_result_ttl_fails_when_the_app_is_made() -> None:
    with pytest.raises(ValueError, match="result_ttl"):
        Afterwork("memory://", result_ttl="forever")


def test_the_app_says_where_its_jobs_go_and_how_many_tasks_it_has() -> None:
    jobs = Afterwork("memory://")
    jobs.task(record_call)
    assert repr(jobs) == "<Afterwork memory:// tasks=1>"


def test_worker_builds_a_worker_for_this_app() -> None:
    jobs = Afterwork("memory://")
    worker = jobs.worker(queues=["high", "low"], concurrency=3)
    assert isinstance(worker, Worker)
    assert worker.app is jobs
    assert (worker.queues, worker.concurrency) == (["high", "low"], 3)


# -- the task registry ----------------------------------------------------------------------


def test_resolve_task_finds_a_registered_task_by_name() -> None:
    jobs = Afterwork("memory://")
    task = jobs.task(record_call)
    assert jobs.resolve_task(task.name) is task


def test_resolve_task_names_the_unknown_task_and_what_to_check() -> None:
    with pytest.raises(UnknownTask, match=r"'billing\.charge'.*imported"):
        Afterwork("memory://").resolve_task("billing.charge")


# -- the app's own package ------------------------------------------------------------------


def test_the_app_records_the_package_of_the_module_that_created_it() -> None:
    assert Afterwork("memory://").home_package == __name__.split(".")[0]


def test_the_home_package_of_a_module_whose_name_starts_with_afterwork_is_its_own() -> None:
    namespace = {"__name__": "afterworkshop.jobs", "Afterwork": Afterwork}
    exec("jobs = Afterwork('memory://')", namespace)
    assert namespace["jobs"].home_package == "afterworkshop"  # type: ignore[attr-defined]


# -- ad hoc jobs ----------------------------------------------------------------------------
# On a durable broker an ad hoc job must be importable by name; memory:// is the
# in-process queue instead (tests/test_inprocess.py).


@pytest.fixture
def durable_app(tmp_path: Path) -> Iterator[Afterwork]:
    jobs = Afterwork(f"sqlite:///{tmp_path}/jobs.db")
    yield jobs
    jobs.close()


async def test_a_module_level_function_runs_as_an_ad_hoc_job(durable_app: Afterwork) -> None:
    handle = await durable_app.aenqueue(record_call, 1, "two")
    worker = durable_app.worker(burst=True)
    await asyncio.wait_for(worker.run(), 5)
    assert await handle.aresult(timeout=5) == "recorded"
    assert calls == [("record_call", (1, "two"))]


def test_an_ad_hoc_job_can_be_sent_from_sync_code(durable_app: Afterwork) -> None:
    handle = durable_app.enqueue(arecord_call, 3)
    asyncio.run(durable_app.worker(burst=True).run())
    assert handle.result(timeout=5) == "arecorded"
    assert calls == [("arecord_call", (3,))]


def test_an_ad_hoc_job_uses_the_default_queue_and_policy(durable_app: Afterwork) -> None:
    info = durable_app.enqueue(record_call).info()
    assert info.task == f"{__name__}:record_call"
    assert (info.queue, info.priority, info.max_attempts) == ("default", 0, 3)


def test_a_task_passed_to_enqueue_is_sent_as_itself(durable_app: Afterwork) -> None:
    task = durable_app.task(queue="special")(record_call)
    info = durable_app.enqueue(task, 1).info()
    assert (info.task, info.queue) == (task.name, "special")


def test_a_lambda_is_refused_as_an_ad_hoc_job(durable_app: Afterwork) -> None:
    with pytest.raises(TaskConfigurationError, match="lambda"):
        durable_app.enqueue(lambda: None)


def test_a_nested_function_is_refused_as_an_ad_hoc_job(durable_app: Afterwork) -> None:
    def nested() -> None: ...

    with pytest.raises(ValueError, match="inside another function"):
        durable_app.enqueue(nested)


async def test_a_function_outside_the_apps_package_is_refused_at_enqueue(
    durable_app: Afterwork,
) -> None:
    # A worker would never import it: the job could only end in the dead-letter queue.
    with pytest.raises(TaskConfigurationError) as excinfo:
        durable_app.enqueue(os.getcwd)
    message = str(excinfo.value)
    assert "getcwd" in message
    assert f"the app's own package {durable_app.home_package!r}" in message
    assert "Decorate it with @jobs.task, or define it in" in message
    with pytest.raises(TaskConfigurationError, match="dumps"):
        await durable_app.aenqueue(json.dumps, {})
    assert await (await durable_app.aconnect()).list_jobs() == []
    assert not durable_app.tasks


async def test_the_in_process_queue_still_runs_any_callable() -> None:
    jobs = Afterwork("memory://")
    await jobs.start()
    try:
        job = jobs.enqueue(os.getcwd)
        assert await job.aresult(timeout=5) == os.getcwd()
    finally:
        await jobs.stop()


async def test_a_worker_that_never_saw_an_ad_hoc_function_imports_it_from_the_apps_package(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    web, worker_side = Afterwork(url), Afterwork(url)
    handle = await web.aenqueue(Reports.build, "2024-05")
    assert not worker_side.tasks
    await asyncio.wait_for(worker_side.worker(burst=True).run(), 5)
    assert await handle.aresult(timeout=5) == "report 2024-05"
    await web.aclose()
    await worker_side.aclose()


def test_an_ad_hoc_name_outside_the_apps_package_is_refused() -> None:
    jobs = Afterwork("memory://")
    with pytest.raises(UnknownTask, match="outside the app's package"):
        jobs.resolve_task("os:getcwd")
    with pytest.raises(UnknownTask, match="outside the app's package"):
        jobs.resolve_task(f"{__name__}x:record_call")


def test_an_ad_hoc_name_reaching_through_the_apps_package_to_other_code_is_refused() -> None:
    # This module imports os, so "<this module>:os.getcwd" would find os.getcwd:
    # a payload must not be able to run whatever the app's modules import.
    assert os.getcwd
    jobs = Afterwork("memory://")
    with pytest.raises(UnknownTask):
        jobs.resolve_task(f"{__name__}:os.getcwd")
    with pytest.raises(UnknownTask):
        jobs.resolve_task(f"{__name__}:Afterwork")
    assert not jobs.tasks


def test_an_ad_hoc_name_that_does_not_exist_in_the_package_is_unknown() -> None:
    with pytest.raises(UnknownTask, match="cannot import"):
        Afterwork("memory://").resolve_task(f"{__name__}:no_such_function")


def test_an_ad_hoc_name_in_the_package_resolves_to_that_function() -> None:
    jobs = Afterwork("memory://")
    task = jobs.resolve_task(f"{__name__}:record_call")
    assert task.func is record_call
    assert jobs.resolve_task(f"{__name__}:Reports.build").func is Reports.build


async def test_a_job_enqueued_before_the_app_is_connected_connects_it(tmp_path: Path) -> None:
    jobs = Afterwork(f"sqlite:///{tmp_path}/fresh.db")
    handle = await jobs.task(record_call).aenqueue()
    assert await handle.astatus() == JobStatus.QUEUED
    await jobs.aclose()


def test_an_ad_hoc_function_of_the_running_script_is_refused_at_enqueue(tmp_path: Path) -> None:
    script = tmp_path / "nightly.py"
    script.write_text(
        "from afterwork import Afterwork\n"
        f"jobs = Afterwork('sqlite:///{tmp_path}/jobs.db')\n"
        "def cleanup():\n    pass\n"
        "jobs.enqueue(cleanup)\n"
    )

    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=False
    )

    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("afterwork.errors.TaskConfigurationError: cannot enqueue cleanup")
    assert "defined in the script being run (__main__)" in last
    assert not (tmp_path / "jobs.db").exists() or "cleanup" not in _stored_tasks(tmp_path)


def _stored_tasks(tmp_path: Path) -> str:
    jobs = Afterwork(f"sqlite:///{tmp_path}/jobs.db")
    try:
        return " ".join(j.task for j in jobs.portal.call(jobs.broker.list_jobs()))
    finally:
        jobs.close()


def test_an_ad_hoc_function_of_a_module_run_with_dash_m_is_sent_by_its_name(
    tmp_path: Path,
) -> None:
    package = tmp_path / "shop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text(
        f"from afterwork import Afterwork\njobs = Afterwork('sqlite:///{tmp_path}/jobs.db')\n"
    )
    (package / "tools.py").write_text(
        "from shop.jobs import jobs\n"
        "def cleanup():\n    pass\n"
        "if __name__ == '__main__':\n    print(jobs.enqueue(cleanup).id)\n"
    )

    done = subprocess.run(
        [sys.executable, "-m", "shop.tools"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert _stored_tasks(tmp_path) == "shop.tools:cleanup"
