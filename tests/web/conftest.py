"""A real uvicorn server on a free loopback port, driven phase by phase from the test.

``serve(app)`` runs uvicorn's own startup (lifespan included) on the test's
event loop and yields once the socket listens; leaving the block runs uvicorn's
shutdown (connections closed, lifespan shutdown) unless the test already
stopped the server. Nothing here polls: startup and shutdown return when done.

Tests marked ``anyio`` run on both of anyio's backends, asyncio and trio, by
anyio's pytest plugin; pytest-asyncio (in auto mode for the rest of the suite)
is kept away from them.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

T = TypeVar("T")
#: Longest any test waits for something that should happen at once.
WAIT = 5.0


async def within(awaitable: Awaitable[T], timeout: float = WAIT) -> T:
    """Await with a bound, so a missing wake-up fails the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, timeout)


@dataclass
class Served:
    server: uvicorn.Server
    sock: socket.socket
    url: str
    port: int
    stopped: bool = field(default=False)

    async def stop(self) -> None:
        """uvicorn's shutdown, as on SIGTERM: close connections, then lifespan shutdown."""
        if not self.stopped:
            self.stopped = True
            await self.server.shutdown(sockets=[self.sock])

    def client(self, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=WAIT, **options)


@asynccontextmanager
async def serve(app: Any, **options: Any) -> AsyncIterator[Served]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options = {"lifespan": "on", "log_level": "warning", **options}
    config = uvicorn.Config(app, **options)
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await within(server.startup(sockets=[sock]))
    served = Served(server, sock, f"http://127.0.0.1:{port}", port)
    try:
        yield served
    finally:
        await within(served.stop(), 30)


@pytest.fixture(params=["asyncio", "trio"], scope="module")
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The backends ``anyio`` tests run on: named, so a missing trio fails instead of skipping."""
    return str(request.param)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give ``anyio`` tests back to anyio's plugin.

    pytest-asyncio's auto mode turns every coroutine test into an item of its
    own that runs on an asyncio loop, even one that asks for trio; these get a
    plain test item again, which anyio's plugin runs on the backend it names.
    """
    for index, item in enumerate(items):
        if (
            isinstance(item, pytest.Function)
            and type(item) is not pytest.Function
            and item.get_closest_marker("anyio") is not None
        ):
            items[index] = pytest.Function.from_parent(
                item.parent,
                name=item.name,
                callspec=getattr(item, "callspec", None),
                callobj=item.obj,
                fixtureinfo=item._fixtureinfo,
                originalname=item.originalname,
            )


@pytest.fixture
def events() -> dict[str, asyncio.Event]:
    """Named asyncio events a test and its app share; created on first use."""

    class Events(dict[str, asyncio.Event]):
        def __missing__(self, key: str) -> asyncio.Event:
            self[key] = event = asyncio.Event()
            return event

    return Events()
