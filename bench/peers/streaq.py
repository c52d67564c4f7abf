"""streaq (Redis streams, coredis): ``Worker(concurrency=10)`` run with its documented
``worker.run_sync()``, rather than the ``streaq run`` command only because the
command sets logging to INFO with two lines per task; everything else is default.
"""

from __future__ import annotations

from streaq import Worker

from peers.common import CONCURRENCY, REDIS_URL, Producer, record

app = Worker(redis_url=REDIS_URL, concurrency=CONCURRENCY)


@app.task
async def noop(i: int) -> None:
    record(i)


class Harness(Producer):
    batch_api = "worker.enqueue_many([task.enqueue(i) ...])"

    async def open(self) -> None:
        await app.__aenter__()

    async def one(self, i: int) -> None:
        await noop.enqueue(i)

    async def many(self, ids: range) -> None:
        await app.enqueue_many([noop.enqueue(i) for i in ids])

    async def close(self) -> None:
        await app.__aexit__(None, None, None)


def worker() -> None:
    app.run_sync()
