"""``afterwork demo``: a realistic mix of jobs on a local SQLite file, run by a worker you watch.

The tasks here are what a web app hands off: resizing uploads, sending mail
(the SMTP server sometimes says "try later"), building reports in a thread,
and charging a card that is always declined, which ends in the dead-letter
queue. After the demo, ``afterwork status afterwork.demo:jobs`` shows the same
file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import sys
import time
from typing import Any

from .app import Afterwork
from .brokers import Broker
from .hooks import Hook
from .job import ErrorInfo, JobRecord
from .report import gather_status, render_status
from .retry import RetryPolicy
from .worker import Worker

DEMO_URL_VAR = "AFTERWORK_DEMO_URL"
jobs = Afterwork(os.environ.get(DEMO_URL_VAR, "sqlite:///afterwork-demo.db"))
_quick_retries = RetryPolicy(max_attempts=3, base_delay=0.3, jitter=False)
_busy_once: set[int] = set()


@jobs.task(queue="default")
async def resize_image(image_id: int) -> str:
    await asyncio.sleep(random.uniform(0.02, 0.15))
    return f"uploads/{image_id}-800px.webp"


@jobs.task(queue="default", retries=_quick_retries)
async def send_welcome_email(user_id: int) -> str:
    await asyncio.sleep(random.uniform(0.01, 0.05))
    if user_id % 4 == 0 and user_id not in _busy_once:
        _busy_once.add(user_id)
        raise ConnectionError("421 SMTP server busy, try again later")
    return f"sent to user {user_id}"


@jobs.task(queue="reports", timeout=30)
def build_monthly_report(month: str) -> int:
    time.sleep(random.uniform(0.3, 0.8))  # a blocking library call: runs in a thread
    return random.randint(1_000, 9_000)


@jobs.task(queue="default", priority=50, retries=_quick_retries)
async def charge_card(order_id: int) -> None:
    raise ValueError(f"card for order {order_id} was declined")


class _Narrator(Hook):
    """Prints retries and dead letters above the progress bar."""

    def __init__(self, say: Any) -> None:
        self.say = say

    def on_retry(self, worker: Worker, job: JobRecord, error: ErrorInfo, delay: float) -> None:
        self.say(f"  retry   {job.task.rsplit('.', 1)[-1]} after {error.type}: {error.message}")

    def on_dead_letter(self, worker: Worker, job: JobRecord, error: ErrorInfo) -> None:
        name = job.task.rsplit(".", 1)[-1]
        self.say(f"  dead    {name} after {job.attempts} attempts: {error.message}")


def _mix(count: int) -> list[JobRecord]:
    batch = [charge_card.prepare(1001)]
    for i in range(1, count):
        kind = i % 10
        if kind < 5:
            batch.append(resize_image.prepare(i))
        elif kind < 8:
            batch.append(send_welcome_email.prepare(i))
        elif kind == 8:
            batch.append(build_monthly_report.prepare(f"2026-{i % 12 + 1:02d}"))
        else:
            batch.append(resize_image.using(delay=1).prepare(i))
    return batch


async def _finished(broker: Broker) -> int:
    stats = await broker.stats()
    return sum(c.get(s, 0) for c in stats.values() for s in ("succeeded", "failed", "cancelled"))


class _Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stdout.isatty()
        self.started = time.monotonic()
        self.last_line = ""
        self.last_step = -1

    def say(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\r\033[K" + text + "\n" + self.last_line)
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def draw(self, done: int, worker: Worker) -> None:
        width = 30
        filled = width * done // self.total
        bar = "#" * filled + "." * (width - filled)
        line = (
            f"  [{bar}] {done}/{self.total} done, {worker.running} running, "
            f"{time.monotonic() - self.started:.1f}s"
        )
        self.last_line = line
        if self.tty:
            sys.stdout.write("\r\033[K" + line)
        elif done * 4 // self.total != self.last_step:  # a line per quarter in logs
            self.last_step = done * 4 // self.total
            sys.stdout.write(line + "\n")
        sys.stdout.flush()


async def run_demo(url: str, count: int, concurrency: int) -> None:
    app = jobs if url == jobs.url else _rebind(url)
    progress = _Progress(count)
    app.hooks = type(app.hooks)([_Narrator(progress.say)])
    logging.getLogger("afterwork").setLevel(logging.CRITICAL)  # the narrator tells the story
    broker = await app.aconnect()
    print(f"afterwork demo: {count} jobs into {url} (no server needed)\n")
    baseline = await _finished(broker)
    await app.aenqueue_many(_mix(count))
    worker = app.worker(queues=["default", "reports"], concurrency=concurrency, heartbeat=0.5)
    running = asyncio.create_task(worker.run())
    while (done := await _finished(broker) - baseline) < count and not running.done():
        progress.draw(done, worker)
        await asyncio.sleep(0.1)  # redraw rate of the bar, not a wait for an event
    progress.draw(min(done, count), worker)
    print("\n")
    worker.stop()
    await running
    print(render_status(await gather_status(broker)))
    hint = "" if url == "sqlite:///afterwork-demo.db" else f"{DEMO_URL_VAR}={url} "
    print(
        "\nLook around:\n"
        f"  {hint}afterwork status afterwork.demo:jobs\n"
        f"  {hint}afterwork dlq afterwork.demo:jobs list\n"
        f"  {hint}afterwork jobs afterwork.demo:jobs --status failed"
    )
    await app.aclose()


def _rebind(url: str) -> Afterwork:
    """The demo tasks on another broker; the registry is shared, the URL is not."""
    app = Afterwork(url)
    # Tasks are immutable: the app gets copies bound to it (jobs built from the module's
    # tasks carry only their name, so the worker runs these).
    app.tasks = {name: dataclasses.replace(task, app=app) for name, task in jobs.tasks.items()}
    return app
