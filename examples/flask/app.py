"""A small Flask shop that hands work off with afterwork: run it with ``flask --app app run``.

- ``POST /signup`` answers at once; the welcome email is a durable task run by
  the embedded worker, the audit line is written after the response, and the
  signup counter is bumped through the ``{"background": [...]}`` shorthand.
- ``GET /jobs/<id>`` shows a job's status and result.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from typing import Any

from flask import Flask, request

from afterwork import Afterwork, JobNotFound, after_response
from afterwork.integrations.flask import AfterworkFlask

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
log = logging.getLogger("shop")

jobs = Afterwork("sqlite:///afterwork.db")  # jobs survive a restart; no server needed
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
signups = 0


@jobs.task(retries=3, timeout=30)
def send_welcome_email(address: str) -> str:
    time.sleep(0.5)  # talking to the mail provider
    return f"welcome email sent to {address}"


def audit(event: str, address: str) -> None:
    # Runs after the response; the request's context variables are still there.
    log.info("[%s] audit: %s %s", request_id.get(), event, address)


def count_signup() -> None:
    global signups
    signups += 1
    log.info("[%s] %d signups so far", request_id.get(), signups)


app = Flask(__name__)
AfterworkFlask(app, jobs)  # starts the embedded worker with the first request


@app.before_request
def tag_request() -> None:
    request_id.set(request.headers.get("X-Request-Id") or uuid.uuid4().hex[:8])


@app.post("/signup")
def signup() -> Any:
    address = request.form["email"]
    job = send_welcome_email.enqueue(address)
    after_response(audit, "signup", address)
    return {"email": address, "job": job.id, "background": [count_signup]}


@app.get("/jobs/<job_id>")
def job_status(job_id: str) -> Any:
    handle = jobs.job(job_id)
    try:
        status = handle.status()
    except JobNotFound:
        return {"error": f"no job {job_id}"}, 404
    result = handle.result(timeout=0) if status == "succeeded" else None
    return {"id": job_id, "status": status, "result": result}
