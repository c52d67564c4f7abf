"""After-response work wherever Starlette runs: each test on asyncio and on trio.

The app is driven in-process: the ASGI lifespan by :class:`Lifespan` and
requests through httpx's ASGI transport, which both backends support.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio
import httpx
import pytest
import sniffio
from anyio.abc import TaskGroup
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from afterwork import (
    Afterwork,
    BackgroundTask,
    BackgroundTasks,
    ConfigurationError,
    after_response,
)
from afterwork.eventloops import loop_runs_here
from afterwork.integrations.asgi import AfterworkMiddleware
from afterwork.integrations.starlette import background_tasks

from .apps import RequestIdMiddleware, request_id
from .conftest import WAIT

pytestmark = pytest.mark.anyio

T = TypeVar("T")
Message = dict[str, Any]

#: The request's after-response tasks, as a FastAPI dependency.
Tasks = Annotated[BackgroundTasks, Depends(background_tasks)]

user: contextvars.ContextVar[str | None] = contextvars.ContextVar("user", default=None)


async def within(awaitable: Awaitable[T], timeout: float = WAIT) -> T:
    """Await with a bound, so a missing wake-up fails the test instead of hanging it."""
    with anyio.fail_after(timeout):
        return await awaitable


async def in_thread_within(event: threading.Event) -> None:
    """Wait for a thread's event without blocking the loop."""
    assert await anyio.to_thread.run_sync(event.wait, WAIT)


class Lifespan:
    """The server's side of the ASGI lifespan protocol, one step at a time."""

    def __init__(self, app: Any, group: TaskGroup) -> None:
        self.app = app
        self._to_app, self._app_inbox = anyio.create_memory_object_stream[Message](math.inf)
        self._app_outbox, self._from_app = anyio.create_memory_object_stream[Message](math.inf)
        #: Set as the app takes the shutdown message: the middleware's drain starts then.
        self.shutdown_delivered = anyio.Event()
        self.error: BaseException | None = None
        self.finished = anyio.Event()  # the app's lifespan call returned
        group.start_soon(self._run)

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        try:
            await self.app(scope, self._receive, self._app_outbox.send)
        except Exception as exc:  # the app's own failure, for the test to see
            self.error = exc
        finally:
            self._app_outbox.close()
            self.finished.set()

    async def _receive(self) -> Message:
        message = await self._app_inbox.receive()
        if message["type"] == "lifespan.shutdown":
            self.shutdown_delivered.set()
        return message

    async def _step(self, kind: str) -> Message:
        await self._to_app.send({"type": f"lifespan.{kind}"})
        return await within(self._from_app.receive())

    async def startup(self) -> Message:
        return await self._step("startup")

    async def shutdown(self) -> Message:
        return await self._step("shutdown")


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Lifespan]]:
    """The app started, a client for it, and its lifespan (shut down on leaving, if not yet)."""
    async with anyio.create_task_group() as group:
        lifespan = Lifespan(app, group)
        try:
            assert (await lifespan.startup())["type"] == "lifespan.startup.complete"
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                yield client, lifespan
            if not lifespan.shutdown_delivered.is_set():
                assert (await lifespan.shutdown())["type"] == "lifespan.shutdown.complete"
        finally:  # a lifespan left waiting (the test failed) must not hold the test up
            group.cancel_scope.cancel()


async def test_each_backend_runs_on_its_own_event_loop(anyio_backend: str) -> None:
    """pytest-asyncio, in auto mode for the rest of the suite, leaves these tests alone."""
    assert sniffio.current_async_library() == anyio_backend


async def test_sync_code_knows_a_loop_runs_in_its_thread_on_either_backend() -> None:
    """So a sync close() called from async code runs its coroutines on a thread of their own."""
    assert loop_runs_here()
    assert not await anyio.to_thread.run_sync(loop_runs_here)


def starlette_app(*routes: Route, **options: Any) -> Starlette:
    middleware = [Middleware(AfterworkMiddleware, **options), Middleware(RequestIdMiddleware)]
    return Starlette(routes=list(routes), middleware=middleware)


async def test_the_response_is_sent_before_request_state_background_runs() -> None:
    release, done = anyio.Event(), anyio.Event()
    sent: list[str] = []

    async def send_welcome_email(email: str) -> None:
        await release.wait()
        sent.append(email)
        done.set()

    async def signup(request: Request) -> Response:
        request.state.background.add_task(send_welcome_email, "ada@example.com")
        return JSONResponse({"id": 1})

    async with running(starlette_app(Route("/signup", signup, methods=["POST"]))) as (client, _):
        response = await within(client.post("/signup"))  # the call still waits: not the client
        assert response.json() == {"id": 1}
        assert sent == []
        release.set()
        await within(done.wait())
    assert sent == ["ada@example.com"]


async def test_after_response_runs_coroutines_and_blocking_functions_in_a_thread() -> None:
    done = threading.Event()
    ran: list[str] = []

    async def count_login(user_id: int) -> None:
        ran.append(f"counted {user_id}")

    def write_audit_log(user_id: int, *, action: str) -> None:  # blocking: not on the loop
        ran.append(f"{action} {user_id} in {threading.current_thread() is threading.main_thread()}")
        done.set()

    def record(user_id: int) -> None:  # deep in the app's code, no request in sight
        after_response(count_login, user_id)
        after_response(write_audit_log, user_id, action="login")

    async def login(request: Request) -> Response:
        record(7)
        return PlainTextResponse("ok")

    async with running(starlette_app(Route("/login", login))) as (client, _):
        assert (await within(client.get("/login"))).text == "ok"
        await in_thread_within(done)
    assert ran == ["counted 7", "login 7 in False"]


@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "plain"])
async def test_background_tasks_on_a_starlette_response(middleware: bool) -> None:
    done = anyio.Event()
    ran: list[str] = []

    def log_event(event: str) -> None:
        ran.append(event)

    async def broken() -> None:
        raise RuntimeError("smtp is down")

    async def last(email: str) -> None:
        ran.append(email)
        done.set()

    async def register(request: Request) -> Response:
        tasks = BackgroundTasks(tasks=[BackgroundTask(log_event, "user_registered")])
        tasks.add_task(broken)
        tasks.add_task(last, "ada@example.com")
        return JSONResponse({"registered": True}, background=tasks)

    routes = [Route("/register", register)]
    app = starlette_app(*routes) if middleware else Starlette(routes=routes)
    async with running(app) as (client, _):
        assert (await within(client.get("/register"))).json() == {"registered": True}
        await within(done.wait())
    assert ran == ["user_registered", "ada@example.com"]


@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "plain"])
async def test_fastapi_background_tasks_dependency_and_response(middleware: bool) -> None:
    done = threading.Event()
    ran: list[str] = []

    async def welcome(email: str) -> None:
        ran.append(f"welcome {email}")

    def audit(email: str) -> None:
        ran.append(f"audit {email}")
        done.set()

    app = FastAPI()
    if middleware:
        app.add_middleware(AfterworkMiddleware)

    @app.post("/signup")
    async def signup(email: str, tasks: Tasks) -> dict[str, str]:
        tasks.add_task(welcome, email)
        return {"email": email}

    @app.post("/audit")
    def audited(email: str) -> Response:  # sync: FastAPI runs it in a thread
        return JSONResponse({"ok": True}, background=BackgroundTask(audit, email))

    async with running(app) as (client, _):
        response = await within(client.post("/signup", params={"email": "ada@example.com"}))
        assert response.json() == {"email": "ada@example.com"}
        response = await within(client.post("/audit", params={"email": "ada@example.com"}))
        assert response.json() == {"ok": True}
        await in_thread_within(done)
    assert ran == ["welcome ada@example.com", "audit ada@example.com"]


async def test_a_failing_call_is_logged_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done = anyio.Event()
    reported: list[str] = []
    ran: list[str] = []

    async def charge_card(order: int) -> None:
        raise ValueError(f"card declined for order {order}")

    def resize_image(name: str) -> None:
        raise OSError(f"no such image {name}")

    async def notify(order: int) -> None:
        ran.append(f"notified {order}")
        done.set()

    async def on_error(task: BackgroundTask, exc: BaseException) -> None:
        await anyio.lowlevel.checkpoint()  # a handler that awaits, on either loop
        reported.append(f"{task.name.rsplit('.', 1)[-1]}: {type(exc).__name__}")

    async def order(request: Request) -> Response:
        request.state.background.add_task(charge_card, 5)
        request.state.background.add_task(resize_image, "cat.png")
        after_response(notify, 5)
        return JSONResponse({"order": 5})

    app = starlette_app(Route("/order", order), on_error=on_error)
    with caplog.at_level(logging.ERROR, logger="afterwork"):
        async with running(app) as (client, _):
            assert (await within(client.get("/order"))).json() == {"order": 5}
            await within(done.wait())
    assert ran == ["notified 5"]
    assert reported == ["charge_card: ValueError", "resize_image: OSError"]
    messages = [r.getMessage() for r in caplog.records if r.name == "afterwork.background"]
    assert any(
        "charge_card failed with ValueError: card declined for order 5" in m for m in messages
    )
    assert any("resize_image failed with OSError: no such image cat.png" in m for m in messages)


async def test_calls_see_the_requests_context_variables_and_keep_their_own_changes() -> None:
    done = threading.Event()
    seen: list[tuple[str, str | None, str | None]] = []

    async def audit() -> None:
        seen.append(("audit", request_id.get(), user.get()))
        user.set("changed by audit")  # stays in this call's context

    def audit_in_thread() -> None:
        seen.append(("thread", request_id.get(), user.get()))
        done.set()

    async def endpoint(request: Request) -> Response:
        user.set("ada")
        after_response(audit)
        request.state.background.add_task(audit_in_thread)
        return PlainTextResponse("ok")

    async with running(starlette_app(Route("/", endpoint))) as (client, _):
        await within(client.get("/", headers={"x-request-id": "req-42"}))
        await in_thread_within(done)
    assert seen == [("audit", "req-42", "ada"), ("thread", "req-42", "ada")]


async def test_concurrent_runs_one_requests_calls_at_the_same_time() -> None:
    arrived = {1: anyio.Event(), 2: anyio.Event()}
    both = anyio.Event()

    async def half(n: int) -> None:
        arrived[n].set()
        await arrived[3 - n].wait()  # only passes if the other call runs at the same time
        if all(event.is_set() for event in arrived.values()):
            both.set()

    async def endpoint(request: Request) -> Response:
        after_response(half, 1)
        after_response(half, 2)
        return PlainTextResponse("ok")

    async with running(starlette_app(Route("/", endpoint), concurrent=True)) as (client, _):
        await within(client.get("/"))
        await within(both.wait())


async def test_shutdown_waits_for_running_calls_before_the_apps_own_shutdown() -> None:
    finished: list[str] = []

    async def send_receipt(order: int) -> None:
        await lifespan.shutdown_delivered.wait()  # still running when the shutdown begins
        finished.append(f"receipt {order}")

    async def checkout(request: Request) -> Response:
        after_response(send_receipt, 9)
        return PlainTextResponse("ok")

    async with running(starlette_app(Route("/", checkout))) as (client, lifespan):
        assert (await within(client.get("/"))).text == "ok"
        assert finished == []
        assert (await lifespan.shutdown())["type"] == "lifespan.shutdown.complete"
        assert finished == ["receipt 9"]


async def test_shutdown_cancels_and_logs_calls_that_outlive_the_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = anyio.Event()
    outcome: list[str] = []

    async def stuck() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise

    async def endpoint(request: Request) -> Response:
        after_response(stuck)
        return PlainTextResponse("ok")

    app = starlette_app(Route("/", endpoint), grace_period=0.1)
    with caplog.at_level(logging.WARNING, logger="afterwork"):
        async with running(app) as (client, lifespan):
            await within(client.get("/"))
            await within(started.wait())
            assert (await lifespan.shutdown())["type"] == "lifespan.shutdown.complete"
    assert outcome == ["cancelled"]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "did not finish within 0.1s" in warning
    assert warning.endswith(stuck.__qualname__)


async def test_shutdown_stops_waiting_for_a_blocking_call_that_outlives_the_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its thread cannot be stopped, so it is left to finish on its own."""
    started, release, returned = threading.Event(), threading.Event(), threading.Event()

    def render_report() -> None:
        started.set()
        release.wait(2 * WAIT)  # blocks well past the grace period
        returned.set()

    async def endpoint(request: Request) -> Response:
        after_response(render_report)
        return PlainTextResponse("ok")

    app = starlette_app(Route("/", endpoint), grace_period=0.1)
    with caplog.at_level(logging.WARNING, logger="afterwork"):
        async with running(app) as (client, lifespan):
            try:
                await within(client.get("/"))
                await in_thread_within(started)
                assert (await lifespan.shutdown())["type"] == "lifespan.shutdown.complete"
                assert not returned.is_set()
            finally:
                release.set()
    await in_thread_within(returned)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "did not finish within 0.1s and was cancelled" in warning
    assert warning.endswith(render_report.__qualname__)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_jobs_on_the_middleware_fail_startup_with_what_to_do() -> None:
    jobs = Afterwork("memory://")
    app = Starlette(routes=[], middleware=[Middleware(AfterworkMiddleware, jobs=jobs)])
    async with anyio.create_task_group() as group:
        lifespan = Lifespan(app, group)
        reply = await lifespan.startup()
        await within(lifespan.finished.wait())  # the app never started: nothing to stop
    assert reply["type"] == "lifespan.startup.failed"
    assert "runs on asyncio only" in reply["message"]
    assert "afterwork worker" in reply["message"]
    assert isinstance(lifespan.error, ConfigurationError)
    assert str(lifespan.error) == reply["message"]
    jobs.close()


@pytest.mark.parametrize("handed_over", ["after_response", "background="])
async def test_work_of_a_request_that_ends_as_the_app_shuts_down_runs_to_its_end(
    handed_over: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The request began while the app ran, and ends while its lifespan shuts down."""
    entered, began, done = anyio.Event(), anyio.Event(), anyio.Event()
    ran: list[str] = []

    async def send_receipt() -> None:
        began.set()
        await lifespan.finished.wait()  # outlives the lifespan
        ran.append("receipt")
        done.set()

    async def checkout(request: Request) -> Response:
        background = None
        if handed_over == "after_response":
            after_response(send_receipt)
        else:
            background = BackgroundTask(send_receipt)
        entered.set()
        await lifespan.shutdown_delivered.wait()
        return PlainTextResponse("ok", background=background)

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await within(began.wait())  # the app's own shutdown, while the call starts

    app = Starlette(
        routes=[Route("/", checkout)],
        middleware=[Middleware(AfterworkMiddleware)],
        lifespan=app_lifespan,
    )
    with caplog.at_level(logging.WARNING, logger="afterwork"):
        async with running(app) as (client, lifespan), anyio.create_task_group() as group:
            group.start_soon(client.get, "/")
            await within(entered.wait())
            assert (await lifespan.shutdown())["type"] == "lifespan.shutdown.complete"
            await within(done.wait())
    assert ran == ["receipt"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_work_of_a_request_that_ends_after_the_lifespan_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    entered, release, done = anyio.Event(), anyio.Event(), anyio.Event()

    async def send_receipt() -> None:
        await anyio.lowlevel.checkpoint()
        done.set()

    async def slow(request: Request) -> Response:
        after_response(send_receipt)
        entered.set()
        await release.wait()  # the app shuts down meanwhile
        return PlainTextResponse("late")

    async def call(client: httpx.AsyncClient) -> None:
        assert (await client.get("/")).text == "late"

    with caplog.at_level(logging.WARNING, logger="afterwork"):
        async with (
            running(starlette_app(Route("/", slow))) as (client, lifespan),
            anyio.create_task_group() as group,
        ):
            group.start_soon(call, client)
            await within(entered.wait())
            assert (await lifespan.shutdown())["type"] == "lifespan.shutdown.complete"
            await within(lifespan.finished.wait())
            release.set()
            await within(done.wait())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_the_drain_waits_only_for_work_handed_over_before_it_began(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Work handed over once the drain has begun runs in its request, unbounded by the drain.

    (On asyncio such work gets a task, which the drain waits for as well.)
    """
    entered, late_began, done = anyio.Event(), anyio.Event(), anyio.Event()
    ran: list[str] = []

    async def early() -> None:
        await late_began.wait()  # running when the drain begins; ends as the late work starts
        ran.append("early")

    async def late() -> None:
        late_began.set()
        await lifespan.finished.wait()  # a drain waiting for this would never end
        ran.append("late")
        done.set()

    async def first(request: Request) -> Response:
        after_response(early)
        return PlainTextResponse("ok")

    async def second(request: Request) -> Response:
        after_response(late)
        entered.set()
        await lifespan.shutdown_delivered.wait()  # ends once the drain has begun
        return PlainTextResponse("ok")

    app = starlette_app(Route("/first", first), Route("/second", second), grace_period=4 * WAIT)
    with caplog.at_level(logging.WARNING, logger="afterwork"):
        async with running(app) as (client, lifespan), anyio.create_task_group() as group:
            await within(client.get("/first"))
            group.start_soon(client.get, "/second")
            await within(entered.wait())
            assert (await lifespan.shutdown())["type"] == "lifespan.shutdown.complete"
            await within(done.wait())
    assert ran == ["early", "late"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_one_app_served_on_each_event_loop_in_turn() -> None:
    """As a test suite does that runs the same app on both backends."""
    ran: list[str] = []

    async def record(loop: str) -> None:
        ran.append(f"{loop} on {sniffio.current_async_library()}")

    async def endpoint(request: Request) -> Response:
        after_response(record, request.query_params["loop"])
        return PlainTextResponse("ok")

    async def serve_one_request(app: Starlette, loop: str) -> None:
        async with running(app) as (client, _):
            assert (await within(client.get("/", params={"loop": loop}))).text == "ok"

    app = starlette_app(Route("/", endpoint))
    for loop in ("trio", "asyncio", "trio"):
        anyio.run(serve_one_request, app, loop, backend=loop)
    assert ran == ["trio on trio", "asyncio on asyncio", "trio on trio"]
