"""The Flask extension against a real Werkzeug server and a real HTTP client."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask, g, request

from afterwork import Afterwork, TaskQueueNotRunning, after_response
from afterwork.integrations.flask import AfterworkFlask, background_tasks

Serve = Callable[[Flask], httpx.Client]
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class Recorder:
    """Collects calls from any thread; ``wait(n)`` blocks until ``n`` have arrived."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, *args: Any) -> None:
        with self._cond:
            self.calls.append(args[0] if len(args) == 1 else args)
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = 5) -> list[Any]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.calls) >= n, timeout), self.calls
            return list(self.calls)


def send_welcome_email(address: str) -> str:
    """A durable task (module level, so a worker finds it by name)."""
    return f"welcome sent to {address}"


def current_request_id() -> str:
    return request_id.get()


async def current_request_id_async() -> str:
    return request_id.get()


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)

    @app.before_request
    def set_request_id() -> None:
        request_id.set(request.headers.get("X-Request-Id", "-"))

    return app


@pytest.fixture
def memory_jobs() -> Iterator[Afterwork]:
    jobs = Afterwork("memory://")
    yield jobs
    jobs.stop_in_thread(grace_period=1)
    jobs.close()


def test_the_response_arrives_before_the_task_finishes(app: Flask, serve: Serve) -> None:
    AfterworkFlask(app)
    release = threading.Event()
    finished = threading.Event()

    def slow_report() -> None:
        if release.wait(5):
            finished.set()

    @app.get("/")
    def index() -> str:
        after_response(slow_report)
        return "ok"

    client = serve(app)
    started = time.monotonic()
    response = client.get("/", timeout=3)
    assert response.status_code == 200
    assert response.text == "ok"
    assert time.monotonic() - started < 2
    assert not finished.is_set()
    release.set()
    assert finished.wait(5)


def test_g_background_service_code_and_async_tasks(app: Flask, serve: Serve) -> None:
    AfterworkFlask(app)
    seen = Recorder()

    async def notify(label: str) -> None:
        seen(label)

    def service_layer() -> None:
        after_response(seen, "service")

    @app.get("/")
    def index() -> str:
        g.background.add_task(seen, "g")
        service_layer()
        background_tasks().add_task(notify, "async")
        return "ok"

    client = serve(app)
    assert client.get("/").text == "ok"
    assert seen.wait(3) == ["g", "service", "async"]


def test_a_failing_task_is_logged_and_the_next_one_still_runs(
    app: Flask, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[tuple[str, BaseException]] = []
    AfterworkFlask(app, on_error=lambda task, exc: errors.append((task.name, exc)))
    seen = Recorder()

    def broken() -> None:
        raise ValueError("smtp is down")

    @app.get("/")
    def index() -> str:
        after_response(broken)
        after_response(seen, "after the failure")
        return "ok"

    client = serve(app)
    with caplog.at_level(logging.ERROR, logger="afterwork.background"):
        assert client.get("/").status_code == 200
        assert seen.wait(1) == ["after the failure"]
        assert client.get("/").status_code == 200  # the server is fine
        seen.wait(2)
    failures = [r for r in caplog.records if r.name == "afterwork.background"]
    assert len(failures) == 2
    assert "broken" in failures[0].getMessage()
    assert "ValueError: smtp is down" in failures[0].getMessage()
    assert [str(exc) for _, exc in errors] == ["smtp is down", "smtp is down"]
    assert all(name.endswith("<locals>.broken") for name, _ in errors)


def test_tasks_of_a_failing_view_still_run(app: Flask, serve: Serve) -> None:
    AfterworkFlask(app)
    seen = Recorder()

    @app.get("/")
    def index() -> str:
        after_response(seen, "audit")
        raise RuntimeError("view failed")

    client = serve(app)
    assert client.get("/").status_code == 500
    assert seen.wait(1) == ["audit"]


def test_the_background_shorthand_in_returned_dicts(app: Flask, serve: Serve) -> None:
    AfterworkFlask(app)
    seen = Recorder()

    @app.post("/signup")
    def signup() -> Any:
        return {"id": 7, "background": [seen, "welcome", 7]}

    @app.post("/created")
    def created() -> Any:
        return {"id": 8, "background": (seen, "created")}, 201, {"X-Extra": "1"}

    @app.get("/style")
    def style() -> Any:
        return {"background": "blue"}  # not the shorthand: left alone

    client = serve(app)
    response = client.post("/signup")
    assert response.json() == {"id": 7}
    assert seen.wait(1) == [("welcome", 7)]
    response = client.post("/created")
    assert response.status_code == 201
    assert response.headers["X-Extra"] == "1"
    assert response.json() == {"id": 8}
    assert seen.wait(2)[1] == "created"
    assert client.get("/style").json() == {"background": "blue"}


def test_the_in_process_queue_runs_jobs_with_the_request_context(
    app: Flask, serve: Serve, memory_jobs: Afterwork
) -> None:
    ext = AfterworkFlask(app, memory_jobs)
    handles: dict[str, Any] = {}
    seen = Recorder()

    @app.post("/work")
    def work() -> Any:
        sync_job = memory_jobs.enqueue(current_request_id)
        async_job = memory_jobs.enqueue(current_request_id_async)
        handles[sync_job.id] = sync_job
        handles[async_job.id] = async_job
        after_response(lambda: seen(request_id.get()))
        return {"jobs": [sync_job.id, async_job.id]}

    client = serve(app)
    ids = client.post("/work", headers={"X-Request-Id": "req-42"}).json()["jobs"]
    assert [handles[i].result(timeout=5) for i in ids] == ["req-42", "req-42"]
    assert seen.wait(1) == ["req-42"]
    other = client.post("/work", headers={"X-Request-Id": "req-43"}).json()["jobs"]
    assert handles[other[0]].result(timeout=5) == "req-43"
    assert ext.started
    ext.stop(grace_period=1)
    assert not ext.started


def test_the_in_process_queue_is_not_running_outside_a_running_app(
    app: Flask, serve: Serve, memory_jobs: Afterwork
) -> None:
    ext = AfterworkFlask(app, memory_jobs)

    @app.get("/")
    def index() -> Any:
        return {"job": memory_jobs.enqueue(current_request_id).id}

    with pytest.raises(TaskQueueNotRunning):
        memory_jobs.enqueue(current_request_id)  # no request yet: not started
    client = serve(app)
    assert client.get("/").json()["job"].startswith("local-")  # the first request starts it
    memory_jobs.enqueue(current_request_id).result(timeout=5)
    ext.stop(grace_period=1)
    with pytest.raises(TaskQueueNotRunning):
        memory_jobs.enqueue(current_request_id)


def test_a_durable_task_enqueued_from_a_view_runs_on_the_embedded_worker(
    app: Flask, serve: Serve, tmp_path: Path
) -> None:
    jobs = Afterwork(f"sqlite:///{tmp_path}/jobs.db")
    send = jobs.task(name="flask_tests.send_welcome_email")(send_welcome_email)
    ext = AfterworkFlask(app, jobs)

    @app.post("/signup")
    def signup() -> Any:
        return {"job": send.enqueue(request.form["email"]).id}

    client = serve(app)
    try:
        job_id = client.post("/signup", data={"email": "ada@example.com"}).json()["job"]
        assert jobs.job(job_id).result(timeout=5) == "welcome sent to ada@example.com"
    finally:
        ext.stop(grace_period=1)
        jobs.close()


def test_init_app_later_and_only_once(serve: Serve) -> None:
    ext = AfterworkFlask()
    app = Flask(__name__)
    ext.init_app(app)
    assert app.extensions["afterwork"] is ext
    with pytest.raises(RuntimeError, match="already"):
        AfterworkFlask(app)


def test_stopping_leaves_no_event_loop_open(
    app: Flask, serve: Serve, memory_jobs: Afterwork
) -> None:
    ext = AfterworkFlask(app, memory_jobs)
    ext.start()
    assert memory_jobs._thread is not None
    thread, loop = memory_jobs._thread
    ext.stop(grace_period=1)
    assert not thread.is_alive()
    assert loop.is_closed()  # its selector and self-pipe are released, not left to the GC
