"""afterwork in a Starlette app: after-response tasks, the in-process queue, a durable task.

Run it from this folder with either of:

    uvicorn app:app
    python app.py

then, in another terminal:

    curl -X POST 'localhost:8000/signup?email=ada@example.com'
    curl -X POST 'localhost:8000/login?email=ada@example.com'
    curl localhost:8000/articles/42
    curl -X POST 'localhost:8000/photos?name=cat.png'
    curl localhost:8000/jobs/<the id the last command printed>
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from afterwork import Afterwork, JobNotFound, JobStatus, after_response
from afterwork.integrations.starlette import AfterworkMiddleware, with_background

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
log = logging.getLogger("example")

#: The in-process queue: any callable, run by a pool inside this process.
local = Afterwork("memory://")
#: Durable jobs in a SQLite file next to this one; the middleware runs their
#: worker inside the web process, so queued jobs survive a restart.
jobs = Afterwork(f"sqlite:///{Path(__file__).with_name('jobs.db')}")


@jobs.task(retries=3, timeout=30)
def make_thumbnail(photo: str, width: int) -> str:
    time.sleep(0.5)  # stands for real image work; sync tasks run in a thread
    log.info("thumbnail of %s done", photo)
    return f"{photo.rsplit('.', 1)[0]}-{width}w.jpg"


async def send_welcome_email(email: str) -> None:
    await asyncio.sleep(1)  # stands for the mail server
    log.info("welcome email sent to %s", email)


def write_audit_log(event: str, email: str) -> None:
    log.info("audit: %s by %s", event, email)


async def record_view(article_id: int) -> None:
    log.info("view of article %d recorded", article_id)


async def signup(request: Request) -> Response:
    email = request.query_params["email"]
    # Both run after the response is sent: the client does not wait for them.
    request.state.background.add_task(send_welcome_email, email)
    after_response(write_audit_log, "signup", email)  # from anywhere in the request's code
    return JSONResponse({"id": 1, "email": email})


@with_background
async def login(request: Request) -> Any:
    email = request.query_params["email"]
    return {"ok": True, "background": [write_audit_log, "login", email]}


async def article(request: Request) -> Response:
    article_id = int(request.path_params["id"])
    local.enqueue(record_view, article_id)  # returns at once
    return JSONResponse({"article": article_id})


async def upload_photo(request: Request) -> Response:
    job = await make_thumbnail.aenqueue(request.query_params["name"], 400)
    return JSONResponse({"job": job.id}, status_code=202)


async def job_status(request: Request) -> Response:
    handle = jobs.job(request.path_params["id"])
    try:
        status = await handle.astatus()
    except JobNotFound:
        return JSONResponse({"error": f"no job {handle.id}"}, status_code=404)
    body: dict[str, Any] = {"id": handle.id, "status": status.value}
    if status is JobStatus.SUCCEEDED:
        body["result"] = await handle.aresult()
    return JSONResponse(body)


app = Starlette(
    routes=[
        Route("/signup", signup, methods=["POST"]),
        Route("/login", login, methods=["POST"]),
        Route("/articles/{id:int}", article),
        Route("/photos", upload_photo, methods=["POST"]),
        Route("/jobs/{id}", job_status),
    ],
    middleware=[Middleware(AfterworkMiddleware, jobs=[local, jobs], grace_period=10)],
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, port=8000)
