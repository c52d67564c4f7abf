"""FastAPI: request.state.background, the dependency, the shorthand, lifespan with jobs."""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

from afterwork import Afterwork, BackgroundTasks, after_response
from afterwork.integrations.starlette import (
    AfterworkMiddleware,
    background_tasks,
    with_background,
)

from .apps import RequestIdMiddleware, request_id
from .conftest import serve, within

#: The request's after-response tasks, as a FastAPI dependency.
Tasks = Annotated[BackgroundTasks, Depends(background_tasks)]


class Signup(BaseModel):
    email: str


class User(BaseModel):
    id: int
    email: str


def fastapi_app(middleware: bool = True, **options: Any) -> FastAPI:
    app = FastAPI(**options)
    if middleware:
        app.add_middleware(RequestIdMiddleware)
        app.add_middleware(AfterworkMiddleware)  # outermost: added last
    return app


async def test_request_state_background(events: Any) -> None:
    sent: list[tuple[str, str | None]] = []

    async def send_welcome_email(email: str) -> None:
        await events["release"].wait()
        sent.append((email, request_id.get()))
        events["done"].set()

    app = fastapi_app()

    @app.post("/signup")
    async def signup(request: Request, body: Signup) -> User:
        request.state.background.add_task(send_welcome_email, body.email)
        return User(id=1, email=body.email)

    async with serve(app) as server, server.client() as client:
        response = await client.post(
            "/signup", json={"email": "ada@example.com"}, headers={"x-request-id": "r1"}
        )
        assert response.json() == {"id": 1, "email": "ada@example.com"}
        assert not events["done"].is_set()
        events["release"].set()
        await within(events["done"].wait())
    assert sent == [("ada@example.com", "r1")]


@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "no-middleware"])
async def test_the_background_tasks_dependency(events: Any, middleware: bool) -> None:
    ran: list[str] = []

    def failing(email: str) -> None:
        raise ValueError(email)

    async def welcome(email: str) -> None:
        ran.append(f"welcome {email}")
        events["done"].set()

    app = fastapi_app(middleware)

    def audit(tasks: Tasks, email: str) -> None:  # a sub-dependency sees the same tasks
        tasks.add_task(failing, email)

    @app.post("/signup", dependencies=[Depends(audit)])
    def signup(email: str, tasks: Tasks, request: Request) -> dict[str, Any]:  # sync: a thread
        assert tasks is request.state.background
        tasks.add_task(welcome, email)
        return {"queued": len(tasks)}

    async with serve(app) as server, server.client() as client:
        response = await client.post("/signup", params={"email": "ada@example.com"})
        assert response.json() == {"queued": 2}
        await within(events["done"].wait())
    assert ran == ["welcome ada@example.com"]


@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "no-middleware"])
async def test_the_background_shorthand(events: Any, middleware: bool) -> None:
    emails: list[str] = []
    done = threading.Event()

    async def send_welcome_email(email: str) -> None:
        emails.append(email)
        events["done"].set()

    def log_signup(user_id: int, email: str) -> None:
        emails.append(f"{user_id}:{email}")
        done.set()

    app = fastapi_app(middleware)

    @app.post("/signup/{team}")
    @with_background
    async def signup(team: str, body: Signup, verbose: bool = False) -> User:
        return {  # type: ignore[return-value]
            "id": 1,
            "email": f"{body.email}@{team}",
            "extra": "dropped by response_model",
            "background": [send_welcome_email, body.email],
        }

    @app.get("/plain")
    @with_background
    def plain(user_id: int) -> dict[str, Any]:
        return {"user": user_id, "background": [log_signup, user_id, "x@example.com"]}

    async with serve(app) as server, server.client() as client:
        response = await client.post("/signup/core", json={"email": "ada"})
        assert response.json() == {"id": 1, "email": "ada@core"}
        await within(events["done"].wait())
        assert (await client.get("/plain", params={"user_id": 5})).json() == {"user": 5}
        assert await within(_thread_event(done))
        schema = (await client.get("/openapi.json")).json()
    assert emails == ["ada", "5:x@example.com"]
    params = schema["paths"]["/signup/{team}"]["post"]["parameters"]
    assert [p["name"] for p in params] == ["team", "verbose"]  # nothing hidden leaks out
    assert "requestBody" in schema["paths"]["/signup/{team}"]["post"]


async def _thread_event(event: threading.Event) -> bool:
    import asyncio

    return await asyncio.to_thread(event.wait, 5)


async def test_fastapi_lifespan_with_the_in_process_queue_and_after_response(
    events: Any,
) -> None:
    jobs = Afterwork("memory://")
    order: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        order.append("app startup")
        yield
        order.append("app shutdown")

    app = fastapi_app(middleware=False, lifespan=lifespan)
    app.add_middleware(AfterworkMiddleware, jobs=jobs, worker_options={"concurrency": 4})

    async def record_view(article: int) -> None:
        order.append(f"job {article}")
        events["job"].set()

    @app.get("/articles/{article}")
    async def read(article: int) -> dict[str, Any]:
        job = jobs.enqueue(record_view, article)
        after_response(order.append, f"after response {article}")
        return {"article": article, "job": job.id}

    async with serve(app) as server:
        assert order == ["app startup"]
        assert jobs.running
        assert jobs.local_queue.concurrency == 4
        async with server.client() as client:
            assert (await client.get("/articles/3")).json()["article"] == 3
        await within(events["job"].wait())
    assert order[0] == "app startup"
    assert order[-1] == "app shutdown"  # after the queue stopped
    assert sorted(order[1:-1]) == ["after response 3", "job 3"]
    assert not jobs.running
