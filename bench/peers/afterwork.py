"""afterwork, from the project's own environment (the working tree, installed editable).

Worker: ``afterwork worker peers.afterwork:jobs --concurrency 10 --log-level warning``,
run in-process through the CLI's own entry point so round trips can be counted
(``BENCH_COUNTS``): every round trip is tallied under the broker method it
serves (enqueue, claim, wait, settle, upkeep).
"""

from __future__ import annotations

import atexit
import contextvars
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from afterwork import Afterwork
from peers.common import CONCURRENCY, REDIS_URL, Producer, record

jobs = Afterwork(REDIS_URL)


@jobs.task
async def noop(i: int) -> None:
    record(i)


_tag: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="other")
#: tag -> round trips, commands sent, jobs handled (claimed, settled, enqueued)
_counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])


def count_round_trips() -> None:
    """Tally round trips and the commands in them per broker method."""
    from afterwork.brokers.redis import RedisBroker
    from afterwork.brokers.redis_connection import RedisConnection

    send, block = RedisConnection.send, RedisConnection.block

    async def counted_send(self: Any, commands: Any) -> Any:
        if commands:
            entry = _counts[_tag.get()]
            entry[0] += 1
            entry[1] += len(commands)
        return await send(self, commands)

    async def counted_block(self: Any, command: Any, timeout: float, then: Any = ()) -> Any:
        entry = _counts[_tag.get()]
        entry[0] += 1
        entry[1] += 1 + len(then)
        return await block(self, command, timeout, then)

    stream = RedisConnection._send_as_built

    async def counted_stream(self: Any, commands: Any, then: Any) -> Any:
        sent, results = await stream(self, commands, then)
        entry = _counts[_tag.get()]
        entry[0] += 1  # written as built, read back together: one round trip
        entry[1] += len(sent) + len(then)
        return sent, results

    RedisConnection.send = counted_send  # type: ignore[method-assign]
    RedisConnection._send_as_built = counted_stream  # type: ignore[method-assign]
    RedisConnection.block = counted_block  # type: ignore[method-assign]

    def tagged(method: str, tag: str, jobs_of: Any = None) -> None:
        original = getattr(RedisBroker, method)

        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            token = _tag.set(tag)
            try:
                result = await original(self, *args, **kwargs)
            finally:
                _tag.reset(token)
            if jobs_of is not None:
                _counts[tag][2] += jobs_of(args, result)
            return result

        setattr(RedisBroker, method, wrapper)

    tagged("enqueue", "enqueue", lambda args, result: len(args[0]))
    tagged("_claim", "claim", lambda args, result: len(result[0]))
    tagged("_sleep", "wait")
    tagged("settle", "settle", lambda args, result: len(args[0]))
    for method in ("extend", "register_worker", "unregister_worker", "recover"):
        tagged(method, "upkeep")


def counts() -> dict[str, list[int]]:
    return dict(_counts)


class Harness(Producer):
    batch_api = "jobs.aenqueue_many(noop.prepare(i) for i in ...)"

    async def open(self) -> None:
        if os.environ.get("BENCH_COUNTS"):
            count_round_trips()

    async def one(self, i: int) -> None:
        await noop.aenqueue(i)

    async def many(self, ids: range) -> None:
        await jobs.aenqueue_many(noop.prepare(i) for i in ids)

    async def close(self) -> None:
        await jobs.aclose()

    def extra(self) -> dict[str, Any]:
        return {"counts": counts()} if os.environ.get("BENCH_COUNTS") else {}


def worker() -> None:
    from afterwork.cli import main

    path = os.environ.get("BENCH_COUNTS")
    if path:
        count_round_trips()
        atexit.register(lambda: Path(path).write_text(json.dumps(counts())))
    args = ["worker", "peers.afterwork:jobs", "--concurrency", str(CONCURRENCY)]
    main([*args, "--log-level", "warning"])
