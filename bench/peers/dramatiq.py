"""Dramatiq with its Redis broker and default middleware:
``dramatiq peers.dramatiq --processes 1 --threads 10``.

The command is a supervisor that forks the one worker process; the task
reports that process's pid, so its memory is the one measured.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from peers.common import CONCURRENCY, REDIS_URL, Producer, exec_worker, record, script

dramatiq.set_broker(RedisBroker(url=REDIS_URL))


@dramatiq.actor
def noop(i: int) -> None:
    record(i)


class Harness(Producer):
    async def one(self, i: int) -> None:
        noop.send(i)


def worker() -> None:
    args = ["--processes", "1", "--threads", str(CONCURRENCY)]
    exec_worker([script("dramatiq"), "peers.dramatiq", *args])
