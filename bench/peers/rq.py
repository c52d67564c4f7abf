"""rq: ``rq worker --worker-class rq.worker.SimpleWorker --quiet``.

rq's default worker forks a child for every job; ``SimpleWorker`` (documented
for exactly this) runs jobs in the worker process itself, so a no-op is not
measured as a fork. rq runs one job at a time per worker process.
"""

from __future__ import annotations

from redis import Redis
from rq import Queue

from peers.common import REDIS_URL, Producer, exec_worker, record, script


def noop(i: int) -> None:
    record(i)


class Harness(Producer):
    batch_api = "Queue.enqueue_many(Queue.prepare_data(...) ...)"

    async def open(self) -> None:
        self.queue = Queue(connection=Redis.from_url(REDIS_URL))

    async def one(self, i: int) -> None:
        self.queue.enqueue(noop, i)

    async def many(self, ids: range) -> None:
        self.queue.enqueue_many([Queue.prepare_data(noop, (i,)) for i in ids])


def worker() -> None:
    args = ["--url", REDIS_URL, "--worker-class", "rq.worker.SimpleWorker", "--quiet"]
    exec_worker([script("rq"), "worker", *args, "default"])
