"""After-response tasks in Django views, over real HTTP to Django's own server."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx
import pytest
from dj_support import Recorder
from django.test import RequestFactory

from afterwork import OutsideRequest, after_response
from afterwork.integrations.django import AfterworkMiddleware


def test_tasks_run_after_the_response_is_sent(client: httpx.Client, state: dict[str, Any]) -> None:
    release = threading.Event()
    seen = Recorder()

    def first(label: str) -> None:
        if release.wait(5):
            seen(label)

    state["first"], state["second"] = first, seen
    started = time.monotonic()
    response = client.get("/after", timeout=3)
    assert response.status_code == 200
    assert response.text == "ok"
    assert response.headers["Content-Length"] == "2"
    assert time.monotonic() - started < 2
    assert seen.calls == []  # the first task is still waiting, and the second after it
    release.set()
    assert seen.wait(2) == ["first", "second"]


def test_a_failing_task_is_logged_and_the_next_one_still_runs(
    client: httpx.Client, state: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    seen = Recorder()

    def broken(label: str) -> None:
        raise ValueError(f"{label}: smtp is down")

    state["broken"], state["second"] = broken, seen
    with caplog.at_level(logging.ERROR, logger="afterwork.background"):
        assert client.get("/failing-after").status_code == 200
        assert seen.wait(1) == ["second"]
    [failure] = [r for r in caplog.records if r.name == "afterwork.background"]
    assert "ValueError: broken: smtp is down" in failure.getMessage()
    assert client.get("/failing-after").status_code == 200


def test_async_views_and_async_tasks(client: httpx.Client, state: dict[str, Any]) -> None:
    seen = Recorder()
    state["second"] = seen
    assert client.get("/async-after").text == "ok"
    assert seen.wait(1) == ["async view"]


def test_after_response_outside_a_request_says_what_to_use() -> None:
    with pytest.raises(OutsideRequest, match=r"jobs\.enqueue"):
        after_response(print, "nope")


def test_under_the_django_test_client_tasks_run_when_the_response_closes() -> None:
    seen = Recorder()

    def view(request: Any) -> Any:
        from django.http import HttpResponse

        after_response(seen, "closed")
        return HttpResponse("ok")

    middleware = AfterworkMiddleware(view)
    response = middleware(RequestFactory().get("/"))
    assert seen.calls == []
    response.close()
    assert seen.calls == ["closed"]
    response.close()  # closing twice runs nothing twice
    assert seen.calls == ["closed"]


def test_under_asgi_tasks_run_on_the_servers_loop(state: dict[str, Any]) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    from django.core.asgi import get_asgi_application

    seen = Recorder()
    release = threading.Event()

    def first(label: str) -> None:
        if release.wait(5):
            seen(label)

    state["first"], state["second"] = first, seen
    config = uvicorn.Config(
        get_asgi_application(), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3) as http:
            assert http.get("/after").text == "ok"
            assert seen.calls == []
            release.set()
            assert seen.wait(2) == ["first", "second"]
            assert http.get("/async-after").text == "ok"
            assert seen.wait(3)[2] == "async view"
    finally:
        server.should_exit = True
        thread.join(5)
