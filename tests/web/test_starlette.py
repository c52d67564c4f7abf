"""Starlette specifics: the ``{"background": [...]}`` shorthand on endpoints and methods."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from afterwork.integrations.starlette import AfterworkMiddleware, with_background

from .conftest import serve, within


@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "no-middleware"])
async def test_the_background_shorthand(events: Any, middleware: bool) -> None:
    sent: list[str] = []
    done = threading.Event()

    async def send_welcome_email(email: str) -> None:
        await events["release"].wait()
        sent.append(email)
        events["sent"].set()

    def log(*parts: Any) -> None:
        sent.append(" ".join(map(str, parts)))
        done.set()

    @with_background
    async def signup(request: Request) -> Any:
        email = request.query_params["email"]
        return {"id": 1, "background": [send_welcome_email, email]}

    @with_background
    def sync_endpoint(request: Request) -> Any:  # Starlette runs it in a thread
        return {"ok": True, "background": [log, "sync", request.url.path]}

    @with_background
    async def passthrough(request: Request) -> Any:
        return PlainTextResponse("a response is left alone")

    class Profile(HTTPEndpoint):
        @with_background
        async def get(self, request: Request) -> Any:
            return {"profile": request.path_params["name"]}  # no background: just JSON

    routes = [
        Route("/signup", signup, methods=["POST"]),
        Route("/sync", sync_endpoint),
        Route("/passthrough", passthrough),
        Route("/profile/{name}", Profile),
    ]
    middlewares = [Middleware(AfterworkMiddleware)] if middleware else []
    app = Starlette(routes=routes, middleware=middlewares)
    async with serve(app) as server, server.client() as client:
        response = await within(client.post("/signup", params={"email": "ada@example.com"}))
        assert response.json() == {"id": 1}
        assert sent == []
        events["release"].set()
        await within(events["sent"].wait())
        assert (await client.get("/sync")).json() == {"ok": True}
        assert await asyncio.to_thread(done.wait, 5)
        assert (await client.get("/passthrough")).text == "a response is left alone"
        assert (await client.get("/profile/ada")).json() == {"profile": "ada"}
    assert sent == ["ada@example.com", "sync /sync"]


async def test_a_malformed_shorthand_is_a_clear_error() -> None:
    @with_background
    async def endpoint(request: Request) -> Any:
        return {"background": "send_email"}

    app = Starlette(routes=[Route("/", endpoint)], middleware=[Middleware(AfterworkMiddleware)])
    async with serve(app) as server, server.client() as client:
        response: Response = await client.get("/")  # type: ignore[assignment]
        assert response.status_code == 500
    with pytest.raises(TypeError, match=r"\[callable, \*args\]"):
        await endpoint(Request({"type": "http", "method": "GET", "headers": []}))
