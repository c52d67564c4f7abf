"""taskiq with taskiq-redis as its README sets it up: ``RedisStreamBroker`` (acked
stream reads) and ``RedisAsyncResultBackend`` (results kept a day, as afterwork
keeps them):
``taskiq worker peers.taskiq:broker --workers 1 --max-async-tasks 10 --log-level WARNING``.

The command supervises one worker process; the task reports that one's pid.
"""

from __future__ import annotations

from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from peers.common import CONCURRENCY, REDIS_URL, Producer, exec_worker, record, script

broker = RedisStreamBroker(url=REDIS_URL).with_result_backend(
    RedisAsyncResultBackend(redis_url=REDIS_URL, result_ex_time=86400)
)


@broker.task
async def noop(i: int) -> None:
    record(i)


class Harness(Producer):
    async def open(self) -> None:
        await broker.startup()  # declares the stream's consumer group

    async def one(self, i: int) -> None:
        await noop.kiq(i)

    async def close(self) -> None:
        await broker.shutdown()


def worker() -> None:
    args = ["--workers", "1", "--max-async-tasks", str(CONCURRENCY), "--log-level", "WARNING"]
    exec_worker([script("taskiq"), "worker", "peers.taskiq:broker", *args])
