"""Celery with its Redis transport and no result backend (its default):
``celery -A peers.celery worker --pool threads --concurrency 10 --loglevel WARNING``.

The thread pool keeps the worker one process (the default prefork pool would
start a child process per slot); prefetching and acks are Celery's defaults.
"""

from __future__ import annotations

from celery import Celery

from peers.common import CONCURRENCY, REDIS_URL, Producer, exec_worker, record, script

app = Celery("peers.celery", broker=REDIS_URL)


@app.task
def noop(i: int) -> None:
    record(i)


class Harness(Producer):
    async def one(self, i: int) -> None:
        noop.delay(i)


def worker() -> None:
    args = ["--pool", "threads", "--concurrency", str(CONCURRENCY), "--loglevel", "WARNING"]
    exec_worker([script("celery"), "-A", "peers.celery", "worker", *args])
