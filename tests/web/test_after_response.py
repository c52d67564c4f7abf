"""After-response tasks under AfterworkMiddleware on Starlette, over real HTTP."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from afterwork import BackgroundTask, BackgroundTasks, OutsideRequest, after_response
from afterwork.integrations.asgi import AfterworkMiddleware

from .conftest import serve, within


def starlette_app(*routes: Route, **middleware: Any) -> Starlette:
    return Starlette(
        routes=list(routes), middleware=[Middleware(AfterworkMiddleware, **middleware)]
    )


async def test_the_response_arrives_before_the_task_finishes(events: Any) -> None:
    seen: list[str] = []

    async def send_welcome_email(email: str) -> None:
        events["started"].set()
        await events["release"].wait()
        seen.append(email)
        events["done"].set()

    async def signup(request: Request) -> Response:
        request.state.background.add_task(send_welcome_email, "ada@example.com")
        return JSONResponse({"id": 1})

    app = starlette_app(Route("/signup", signup, methods=["POST"]))
    async with serve(app) as server, server.client() as client:
        response = await client.post("/signup")
        assert response.json() == {"id": 1}
        await within(events["started"].wait())
        assert not events["done"].is_set()  # the task is still waiting: the client is not
        events["release"].set()
        await within(events["done"].wait())
    assert seen == ["ada@example.com"]


async def test_after_response_from_a_helper_and_sync_functions_in_a_thread(events: Any) -> None:
    release, done = threading.Event(), threading.Event()
    threads: list[str] = []

    def write_audit_log(user_id: int, *, action: str) -> None:  # blocking: runs in a thread
        assert release.wait(5)
        threads.append(f"{threading.current_thread().name}:{user_id}:{action}")
        done.set()

    def record(user_id: int) -> None:  # deep in the app's code, no request in sight
        after_response(write_audit_log, user_id, action="login")

    async def login(request: Request) -> Response:
        record(7)
        return PlainTextResponse("ok")

    async with serve(starlette_app(Route("/login", login))) as server:
        async with server.client() as client:
            assert (await client.get("/login")).text == "ok"
        assert not done.is_set()
        release.set()
        assert await asyncio.to_thread(done.wait, 5)
    assert len(threads) == 1
    assert threads[0].endswith(":7:login")
    assert threads[0].split(":")[0] != threading.main_thread().name


async def test_a_failing_task_does_not_stop_the_next_and_is_logged(
    caplog: pytest.LogCaptureFixture, events: Any
) -> None:
    reported: list[tuple[str, str]] = []
    ran: list[str] = []

    async def charge_card(order: int) -> None:
        raise ValueError(f"card declined for order {order}")

    def resize_image(name: str) -> None:
        raise OSError(f"no such image {name}")

    async def notify(order: int) -> None:
        ran.append(f"notified {order}")
        events["done"].set()

    async def on_error(task: BackgroundTask, exc: BaseException) -> None:
        reported.append((task.name, type(exc).__name__))

    async def order(request: Request) -> Response:
        request.state.background.add_task(charge_card, 5)
        request.state.background.add_task(resize_image, "cat.png")
        after_response(notify, 5)
        return JSONResponse({"order": 5})

    app = starlette_app(Route("/order", order), on_error=on_error)
    with caplog.at_level(logging.ERROR, logger="afterwork"):
        async with serve(app) as server, server.client() as client:
            assert (await client.get("/order")).json() == {"order": 5}
            await within(events["done"].wait())
    assert ran == ["notified 5"]
    assert reported == [
        (
            "test_a_failing_task_does_not_stop_the_next_and_is_logged.<locals>.charge_card",
            "ValueError",
        ),
        (
            "test_a_failing_task_does_not_stop_the_next_and_is_logged.<locals>.resize_image",
            "OSError",
        ),
    ]
    messages = [r.getMessage() for r in caplog.records if r.name == "afterwork.background"]
    assert any(
        "charge_card failed with ValueError: card declined for order 5" in m for m in messages
    )
    assert any("resize_image failed with OSError: no such image cat.png" in m for m in messages)


async def test_concurrent_runs_one_requests_tasks_at_the_same_time(events: Any) -> None:
    arrived: list[int] = []
    both = asyncio.Barrier(2)

    async def half(n: int) -> None:
        await both.wait()  # only passes if the other task runs at the same time
        arrived.append(n)
        if len(arrived) == 2:
            events["done"].set()

    async def endpoint(request: Request) -> Response:
        after_response(half, 1)
        after_response(half, 2)
        return PlainTextResponse("ok")

    async with serve(starlette_app(Route("/", endpoint), concurrent=True)) as server:
        async with server.client() as client:
            await client.get("/")
        await within(events["done"].wait())
    assert sorted(arrived) == [1, 2]


@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "plain-starlette"])
async def test_background_tasks_on_a_starlette_response(events: Any, middleware: bool) -> None:
    ran: list[str] = []

    def log_event(event: str) -> None:
        ran.append(event)

    async def broken() -> None:
        raise RuntimeError("smtp is down")

    async def last(email: str) -> None:
        ran.append(email)
        events["done"].set()

    async def register(request: Request) -> Response:
        tasks = BackgroundTasks(tasks=[BackgroundTask(log_event, "user_registered")])
        tasks.add_task(broken)
        tasks.add_task(last, "ada@example.com")
        return JSONResponse({"registered": True}, background=tasks)

    async def single(request: Request) -> Response:
        return PlainTextResponse("one", background=BackgroundTask(log_event, "single"))

    routes = [Route("/register", register), Route("/single", single)]
    app = starlette_app(*routes) if middleware else Starlette(routes=routes)
    async with serve(app) as server, server.client() as client:
        assert (await client.get("/register")).json() == {"registered": True}
        await within(events["done"].wait())
        assert (await client.get("/single")).text == "one"
    # the server has stopped, so after-response work has finished
    assert ran == ["user_registered", "ada@example.com", "single"]


async def test_tasks_see_the_context_variables_of_the_request(events: Any) -> None:
    from .apps import RequestIdMiddleware, request_id

    seen: list[str | None] = []
    done = threading.Event()

    async def audit() -> None:
        seen.append(request_id.get())

    def audit_in_thread() -> None:
        seen.append(request_id.get())
        done.set()

    async def endpoint(request: Request) -> Response:
        after_response(audit)
        request.state.background.add_task(audit_in_thread)
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/", endpoint)],
        middleware=[Middleware(AfterworkMiddleware), Middleware(RequestIdMiddleware)],
    )
    async with serve(app) as server, server.client() as client:
        await client.get("/", headers={"x-request-id": "req-42"})
        assert await asyncio.to_thread(done.wait, 5)
    assert seen == ["req-42", "req-42"]


async def test_outside_a_request_after_response_points_to_enqueue(events: Any) -> None:
    def noop() -> None: ...

    with pytest.raises(OutsideRequest, match=r"jobs\.enqueue"):
        after_response(noop)

    errors: list[BaseException] = []

    async def nested() -> None:
        try:
            after_response(noop)  # the request is over once this runs
        except OutsideRequest as exc:
            errors.append(exc)
        events["done"].set()

    async def endpoint(request: Request) -> Response:
        after_response(nested)
        return PlainTextResponse("ok")

    async with serve(starlette_app(Route("/", endpoint))) as server, server.client() as client:
        await client.get("/")
        await within(events["done"].wait())
    assert len(errors) == 1


async def test_without_lifespan_the_work_runs_in_the_request(events: Any) -> None:
    """Nothing would wait for detached work at shutdown, so it runs as Starlette's does."""
    finished: list[str] = []

    async def send_receipt() -> None:
        await events["release"].wait()
        finished.append("receipt")

    async def endpoint(request: Request) -> Response:
        after_response(send_receipt)
        return PlainTextResponse("ok")

    app = starlette_app(Route("/", endpoint))
    async with serve(app, lifespan="off") as server, server.client() as client:
        assert (await client.get("/")).text == "ok"  # sent before the task ends
        events["release"].set()
    assert finished == ["receipt"]  # uvicorn waited for the request to finish
