"""The in-process queue inside a web app: ``Afterwork("memory://")`` + the middleware."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from afterwork import Afterwork, TaskQueueFull, TaskQueueNotRunning, after_response
from afterwork.integrations.asgi import AfterworkMiddleware

from .apps import RequestIdMiddleware, request_id
from .conftest import serve, within


def app_with(jobs: Afterwork, *routes: Route, **options: Any) -> Starlette:
    return Starlette(
        routes=list(routes),
        middleware=[
            Middleware(AfterworkMiddleware, jobs=jobs, **options),
            Middleware(RequestIdMiddleware),
        ],
    )


async def test_enqueue_returns_at_once_and_the_job_runs_in_the_app(events: Any) -> None:
    jobs = Afterwork("memory://")
    seen: list[tuple[int, str | None]] = []

    async def record_view(article: int) -> None:
        await events["release"].wait()
        seen.append((article, request_id.get()))
        events["done"].set()

    def record_in_thread(article: int) -> int:  # a plain function: runs in the pool's threads
        return article * 2

    async def article(request: Request) -> Response:
        slow = jobs.enqueue(record_view, 3)
        quick = jobs.enqueue(record_in_thread, 21)
        return JSONResponse({"job": slow.id, "result": await quick.aresult(timeout=5)})

    with pytest.raises(TaskQueueNotRunning, match="AfterworkMiddleware"):
        jobs.enqueue(record_view, 0)  # before the app starts
    async with serve(app_with(jobs, Route("/article", article))) as server:
        async with server.client() as client:
            response = await client.get("/article", headers={"x-request-id": "req-7"})
        assert response.json()["result"] == 42
        assert response.json()["job"].startswith("local-")
        assert not events["done"].is_set()
        events["release"].set()
        await within(events["done"].wait())
    assert seen == [(3, "req-7")]
    with pytest.raises(TaskQueueNotRunning):
        jobs.enqueue(record_view, 0)  # after it stopped


async def test_the_queue_is_bounded(events: Any) -> None:
    jobs = Afterwork("memory://", max_pending=2)
    finished = 0

    async def slow() -> None:
        nonlocal finished
        await events["release"].wait()
        finished += 1
        if finished == 2:
            events["both finished"].set()

    async def work(request: Request) -> Response:
        try:
            jobs.enqueue(slow)
        except TaskQueueFull as exc:
            return PlainTextResponse(str(exc), status_code=503)
        return PlainTextResponse("queued", status_code=202)

    async with serve(app_with(jobs, Route("/work", work))) as server, server.client() as client:
        codes = [(await client.get("/work")).status_code for _ in range(3)]
        assert codes == [202, 202, 503]
        events["release"].set()
        await within(events["both finished"].wait())
        # finished jobs free their places
        assert [(await client.get("/work")).status_code for _ in range(2)] == [202, 202]


async def test_worker_pool_size(events: Any) -> None:
    jobs = Afterwork("memory://")
    running = peak = 0

    async def busy() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            events["three running"].set()
        await events["release"].wait()
        running -= 1

    async def work(request: Request) -> Response:
        return JSONResponse([jobs.enqueue(busy).id for _ in range(5)])

    app = app_with(jobs, Route("/work", work), worker_options={"concurrency": 3})
    async with serve(app) as server, server.client() as client:
        await client.get("/work")
        await within(events["three running"].wait())
        assert len(jobs.local_queue) == 5  # three running, two waiting their turn
        events["release"].set()
    assert peak == 3


async def test_shutdown_drains_queued_jobs_and_after_response_work(events: Any) -> None:
    jobs = Afterwork("memory://")
    finished: list[str] = []

    async def job(name: str) -> None:
        await events["release"].wait()
        finished.append(name)

    async def work(request: Request) -> Response:
        for n in range(3):
            jobs.enqueue(job, f"job {n}")
        after_response(job, "after response")
        return PlainTextResponse("ok")

    app = app_with(jobs, Route("/work", work), worker_options={"concurrency": 1}, grace_period=10)
    async with serve(app) as server:
        async with server.client() as client:
            await client.get("/work")
        stopping = asyncio.ensure_future(server.stop())
        await asyncio.sleep(0)
        assert not stopping.done()
        events["release"].set()  # the work finishes during the grace period
        await within(stopping)
    assert sorted(finished) == ["after response", "job 0", "job 1", "job 2"]


async def test_shutdown_drops_and_logs_what_outlives_the_grace_period(
    caplog: pytest.LogCaptureFixture, events: Any
) -> None:
    jobs = Afterwork("memory://")
    cancelled: list[str] = []

    async def stuck(name: str) -> None:
        events[f"{name} started"].set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def work(request: Request) -> Response:
        jobs.enqueue(stuck, "job")
        jobs.enqueue(stuck, "queued job")  # never starts: concurrency 1
        after_response(stuck, "after response")
        return PlainTextResponse("ok")

    app = app_with(jobs, Route("/work", work), worker_options={"concurrency": 1}, grace_period=0.3)
    with caplog.at_level(logging.WARNING, logger="afterwork"):
        async with serve(app) as server:
            async with server.client() as client:
                await client.get("/work")
            await within(events["job started"].wait())
            await within(events["after response started"].wait())
            loop = asyncio.get_running_loop()
            began = loop.time()
            await within(server.stop())
            took = loop.time() - began
    assert sorted(cancelled) == ["after response", "job"]
    assert took < 3  # the grace period (0.3 s) bounds the wait, plus uvicorn's own
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("did not finish within 0.3s" in m and "stuck" in m for m in warnings), warnings
    assert any("2 jobs unfinished" in m for m in warnings), warnings


async def test_a_failing_job_is_logged_and_the_queue_keeps_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    jobs = Afterwork("memory://")

    def broken(n: int) -> None:
        raise KeyError(n)

    async def fine(n: int) -> int:
        return n

    async def work(request: Request) -> Response:
        first = jobs.enqueue(broken, 1)
        second = jobs.enqueue(fine, 2)
        status = str(await asyncio.wait_for(_status_when_done(first), 5))
        return JSONResponse({"first": status, "second": await second.aresult(timeout=5)})

    app = app_with(jobs, Route("/work", work))
    with caplog.at_level(logging.ERROR, logger="afterwork"):
        async with serve(app) as server, server.client() as client:
            body = (await client.get("/work")).json()
    assert body == {"first": "failed", "second": 2}
    assert any("broken" in r.getMessage() and "KeyError" in r.getMessage() for r in caplog.records)


async def _status_when_done(job: Any) -> str:
    with contextlib.suppress(Exception):
        await job.aresult(timeout=5)
    return str(job.status().value)


async def test_plain_asgi_app_without_lifespan_support(events: Any) -> None:
    """The middleware runs the lifespan itself for an app that ignores it."""
    jobs = Afterwork("memory://")
    ran = threading.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"  # lifespan: unsupported, as in many plain apps
        after_response(events["after"].set)
        jobs.enqueue(ran.set)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"plain"})

    async with serve(AfterworkMiddleware(app, jobs=jobs)) as server:
        assert jobs.running
        async with server.client() as client:
            assert (await client.get("/")).text == "plain"
        await within(events["after"].wait())
        assert await asyncio.to_thread(ran.wait, 5)
    assert not jobs.running
