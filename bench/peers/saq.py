"""saq with its Redis queue: ``saq peers.saq.settings`` (one process, logging at
its default WARNING), ``concurrency`` 10 (its default)."""

from __future__ import annotations

from typing import Any

from saq import Queue

from peers.common import CONCURRENCY, REDIS_URL, Producer, exec_worker, record, script

queue = Queue.from_url(REDIS_URL)


async def noop(ctx: dict[str, Any], *, i: int) -> None:
    record(i)


settings = {"queue": queue, "functions": [noop], "concurrency": CONCURRENCY}


class Harness(Producer):
    async def open(self) -> None:
        await queue.connect()

    async def one(self, i: int) -> None:
        await queue.enqueue("noop", i=i)

    async def close(self) -> None:
        await queue.disconnect()


def worker() -> None:
    exec_worker([script("saq"), "peers.saq.settings"])
