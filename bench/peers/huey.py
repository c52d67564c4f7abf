"""huey with ``RedisHuey`` (blocking reads, its default):
``huey_consumer peers.huey.huey --workers 10 --worker-type thread --quiet``.

Stopped with SIGINT, huey's graceful signal.
"""

from __future__ import annotations

from huey import RedisHuey

from peers.common import CONCURRENCY, REDIS_URL, Producer, exec_worker, record, script

huey = RedisHuey("bench", url=REDIS_URL)


@huey.task()
def noop(i: int) -> None:
    record(i)


class Harness(Producer):
    async def one(self, i: int) -> None:
        noop(i)


def worker() -> None:
    args = ["--workers", str(CONCURRENCY), "--worker-type", "thread", "--quiet"]
    exec_worker([script("huey_consumer"), "peers.huey.huey", *args])
