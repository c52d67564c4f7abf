"""A client that goes away does not cancel after-response work (real sockets, real uvicorn)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from afterwork import after_response
from afterwork.integrations.asgi import AfterworkMiddleware

from .conftest import serve, within


async def raw_request(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


def long_task(events: Any, outcome: list[str]) -> Any:
    async def send_receipt(order: int) -> None:
        events["started"].set()
        try:
            await events["release"].wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append(f"sent {order}")
        events["done"].set()

    return send_receipt


async def test_disconnect_before_the_response_is_sent(events: Any) -> None:
    outcome: list[str] = []
    send_receipt = long_task(events, outcome)

    async def checkout(request: Request) -> Response:
        after_response(send_receipt, 9)
        events["scheduled"].set()
        while (await request.receive())["type"] != "http.disconnect":
            pass  # a slow handler that notices its client left
        events["client_gone"].set()
        return PlainTextResponse("too late")

    app = Starlette(
        routes=[Route("/checkout", checkout)], middleware=[Middleware(AfterworkMiddleware)]
    )
    async with serve(app) as server:
        _, writer = await raw_request(server.port, "/checkout")
        await within(events["scheduled"].wait())
        writer.close()
        await writer.wait_closed()
        await within(events["client_gone"].wait())
        await within(events["started"].wait())
        events["release"].set()
        await within(events["done"].wait())
    assert outcome == ["sent 9"]


class Timing(BaseHTTPMiddleware):
    """The kind of middleware many apps have; it runs the app in a task group of its own."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["x-timing"] = "1"
        return response


async def test_disconnect_mid_stream_under_base_http_middleware(events: Any) -> None:
    outcome: list[str] = []
    send_receipt = long_task(events, outcome)

    async def export(request: Request) -> Response:
        after_response(send_receipt, 10)

        async def rows() -> AsyncIterator[bytes]:
            yield b"first row\n"
            events["streaming"].set()
            await asyncio.Event().wait()  # the client leaves before the rest
            yield b"never\n"

        return StreamingResponse(rows())

    app = Starlette(
        routes=[Route("/export", export)],
        middleware=[Middleware(AfterworkMiddleware), Middleware(Timing)],
    )
    async with serve(app) as server:
        reader, writer = await raw_request(server.port, "/export")
        assert b"first row" in await within(reader.readuntil(b"first row\n"))
        await within(events["streaming"].wait())
        writer.close()
        await writer.wait_closed()
        # the stream is cancelled when the client leaves; the task starts then, detached
        await within(events["started"].wait())
        events["release"].set()
        await within(events["done"].wait())
    assert outcome == ["sent 10"]
