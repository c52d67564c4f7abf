"""arq: its documented ``run_worker(WorkerSettings)`` with ``max_jobs=10`` (its
default) and every other setting at its default, including ``poll_delay`` (0.5 s).

Started with ``run_worker`` rather than the ``arq`` command only because the
command sets logging to INFO, one line per job; this way arq logs at WARNING,
as the other libraries here do.
"""

from __future__ import annotations

from typing import Any

from arq import create_pool, run_worker
from arq.connections import RedisSettings

from peers.common import CONCURRENCY, REDIS_URL, Producer, record


async def noop(ctx: dict[str, Any], i: int) -> None:
    record(i)


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    max_jobs = CONCURRENCY


class Harness(Producer):
    async def open(self) -> None:
        self.pool = await create_pool(WorkerSettings.redis_settings)

    async def one(self, i: int) -> None:
        await self.pool.enqueue_job("noop", i)

    async def close(self) -> None:
        await self.pool.aclose()


def worker() -> None:
    run_worker(WorkerSettings)  # type: ignore[arg-type]
