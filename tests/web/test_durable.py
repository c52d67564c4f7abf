"""The durable rung inside the web process: ``sqlite://`` plus the middleware's embedded worker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from afterwork import Afterwork, JobStatus
from afterwork.integrations.asgi import AfterworkMiddleware

from .conftest import serve

PROCESSES: set[int] = set()


def make_thumbnail(photo: str, size: int) -> str:  # a registered task runs by name
    PROCESSES.add(os.getpid())
    return f"{photo}@{size}px"


async def shout(text: str) -> str:
    return text.upper()


def build(url: str) -> tuple[Afterwork, Any, Any]:
    jobs = Afterwork(url)
    return jobs, jobs.task(retries=2)(make_thumbnail), jobs.task(shout)


def web_app(jobs: Afterwork, thumbnail: Any, run_worker: bool) -> Starlette:
    async def upload(request: Request) -> Response:
        job = await thumbnail.aenqueue(request.query_params["photo"], 128)
        return JSONResponse({"job": job.id})

    options = {"jobs": jobs} if run_worker else {}
    return Starlette(
        routes=[Route("/upload", upload, methods=["POST"])],
        middleware=[Middleware(AfterworkMiddleware, **options)],
    )


async def test_a_task_enqueued_from_a_handler_runs_in_the_web_process(tmp_path: Path) -> None:
    jobs, thumbnail, upper = build(f"sqlite:///{tmp_path}/jobs.db")
    async with serve(web_app(jobs, thumbnail, run_worker=True)) as server:
        assert jobs.running
        async with server.client() as client:
            job_id = (await client.post("/upload", params={"photo": "cat.png"})).json()["job"]
        assert await jobs.job(job_id).aresult(timeout=5) == "cat.png@128px"
        assert await (await upper.aenqueue("hi")).aresult(timeout=5) == "HI"
        handle = await jobs.aenqueue(shout, "ad hoc")  # undecorated, importable: ad hoc job
        assert await handle.aresult(timeout=5) == "AD HOC"
    assert {os.getpid()} == PROCESSES
    assert not jobs.running
    await jobs.aclose()


async def test_queued_jobs_survive_a_restart_of_the_web_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    jobs, thumbnail, _ = build(url)
    app = web_app(jobs, thumbnail, run_worker=False)
    async with serve(app) as server, server.client() as client:
        job_id = (await client.post("/upload", params={"photo": "dog.png"})).json()["job"]
    assert await jobs.job(job_id).astatus() == JobStatus.QUEUED  # nobody ran it
    await jobs.aclose()

    jobs, thumbnail, _ = build(url)  # a new process, as far as the app can tell
    async with serve(web_app(jobs, thumbnail, run_worker=True)):
        assert await jobs.job(job_id).aresult(timeout=5) == "dog.png@128px"
    await jobs.aclose()


async def test_the_in_process_queue_and_a_durable_app_together(tmp_path: Path) -> None:
    local = Afterwork("memory://")
    jobs, thumbnail, _ = build(f"sqlite:///{tmp_path}/jobs.db")
    views: list[int] = []

    async def article(request: Request) -> Response:
        local.enqueue(views.append, 42)  # any callable, in this process
        job = await thumbnail.aenqueue("cover.png", 64)  # survives a restart
        return JSONResponse({"job": job.id})

    app = Starlette(
        routes=[Route("/article", article)],
        middleware=[Middleware(AfterworkMiddleware, jobs=[local, jobs], grace_period=5)],
    )
    async with serve(app) as server, server.client() as client:
        assert local.running
        assert jobs.running
        job_id = (await client.get("/article")).json()["job"]
        assert await jobs.job(job_id).aresult(timeout=5) == "cover.png@64px"
    assert views == [42]  # drained at shutdown, at the latest
    assert not local.running
    assert not jobs.running
    await jobs.aclose()
