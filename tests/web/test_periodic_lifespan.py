"""Periodic tasks inside a web app: they run between the app's startup and shutdown handlers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware

from afterwork import Afterwork
from afterwork.integrations.asgi import AfterworkMiddleware

from .conftest import WAIT, serve, within

jobs = Afterwork("memory://")
timeline: list[str] = []
third_run = asyncio.Event()


@jobs.periodic(every="0.05s", name="heartbeat", retries=0)
async def heartbeat() -> None:
    timeline.append("run")
    if timeline.count("run") == 2:
        raise RuntimeError("the second run fails")
    if timeline.count("run") == 3:
        third_run.set()


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    await asyncio.sleep(0.2)  # a slow startup handler: periodic runs must wait for it
    timeline.append("startup done")
    yield
    timeline.append("shutdown handler")


def make_app() -> Starlette:
    return Starlette(lifespan=lifespan, middleware=[Middleware(AfterworkMiddleware, jobs=jobs)])


async def test_periodic_tasks_run_after_startup_survive_a_failure_and_stop_before_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timeline.clear()
    third_run.clear()
    with caplog.at_level(logging.WARNING, logger="afterwork.worker"):
        async with serve(make_app()) as served:
            await within(third_run.wait(), WAIT)
            await served.stop()

    assert timeline[0] == "startup done"
    assert timeline[-1] == "shutdown handler"
    assert timeline.count("run") >= 3
    failure = next(r for r in caplog.records if "the second run fails" in r.getMessage())
    assert failure.task == "heartbeat"  # type: ignore[attr-defined]
    assert failure.error_type == "RuntimeError"  # type: ignore[attr-defined]
    assert not jobs.running
