"""afterwork in a FastAPI app: after-response tasks, the in-process queue, a durable task.

Run it from this folder with either of:

    uvicorn app:app
    python app.py

then, in another terminal:

    curl -X POST localhost:8000/signup -H 'content-type: application/json' \
         -d '{"email": "ada@example.com"}'
    curl -X POST 'localhost:8000/login?email=ada@example.com'
    curl localhost:8000/articles/42
    curl -X POST 'localhost:8000/photos?name=cat.png'
    curl localhost:8000/jobs/<the id the last command printed>
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from afterwork import Afterwork, BackgroundTasks, JobNotFound, JobStatus, after_response
from afterwork.integrations.starlette import (
    AfterworkMiddleware,
    background_tasks,
    with_background,
)

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
log = logging.getLogger("example")

#: The in-process queue: any callable, run by a pool inside this process.
local = Afterwork("memory://")
#: Durable jobs in a SQLite file next to this one; the middleware runs their
#: worker inside the web process, so queued jobs survive a restart.
jobs = Afterwork(f"sqlite:///{Path(__file__).with_name('jobs.db')}")

#: The request's after-response tasks, as a dependency.
Tasks = Annotated[BackgroundTasks, Depends(background_tasks)]


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


@asynccontextmanager
async def lifespan(app: FastAPI) -> Any:
    log.info("app startup (afterwork's workers start right after this)")
    yield
    log.info("app shutdown (afterwork's work has drained by now)")


app = FastAPI(lifespan=lifespan)
app.add_middleware(AfterworkMiddleware, jobs=[local, jobs], grace_period=10)


class Signup(BaseModel):
    email: str


class User(BaseModel):
    id: int
    email: str


@app.post("/signup")
async def signup(body: Signup, tasks: Tasks) -> User:
    # Both run after the response is sent: the client does not wait for them.
    tasks.add_task(send_welcome_email, body.email)
    after_response(write_audit_log, "signup", body.email)  # from anywhere in the request
    return User(id=1, email=body.email)


@app.post("/login")
@with_background
async def login(email: str) -> dict[str, Any]:
    return {"ok": True, "background": [write_audit_log, "login", email]}


@app.get("/articles/{article_id}")
async def article(article_id: int, request: Request) -> dict[str, Any]:
    local.enqueue(record_view, article_id)  # returns at once
    request.state.background.add_task(write_audit_log, "read", f"article {article_id}")
    return {"article": article_id}


@app.post("/photos", status_code=202)
async def upload_photo(name: str) -> dict[str, str]:
    job = await make_thumbnail.aenqueue(name, 400)
    return {"job": job.id}


@app.get("/jobs/{job_id}")
async def job_status(job_id: str) -> dict[str, Any]:
    handle = jobs.job(job_id)
    try:
        status = await handle.astatus()
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id}") from None
    body: dict[str, Any] = {"id": job_id, "status": status.value}
    if status is JobStatus.SUCCEEDED:
        body["result"] = await handle.aresult()
    return body


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, port=8000)
