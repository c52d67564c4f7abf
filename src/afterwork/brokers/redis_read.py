"""The Redis broker's read side: listings, counts and the worker registry.

A mixin of :class:`~afterwork.brokers.redis.RedisBroker`, kept apart from the
state changes so each module holds one concept.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..clock import Clock
from ..defaults import WORKER_FORGOTTEN_AFTER
from ..job import WAITING, JobRecord, JobStatus
from .base import QueueStats, WorkerInfo
from .redis_connection import RedisConnection
from .redis_keys import QueueKeys

#: Listings of scheduled, running or all jobs look at this many per queue and set.
LIST_SCAN = 1000
#: A worker's registry entry outlives its last heartbeat by this long.
WORKER_TTL = int(WORKER_FORGOTTEN_AFTER)
_STATS_ORDER = ("queued", "scheduled", "retrying", "running", "succeeded", "cancelled", "failed")
_worker_decoder = msgspec.json.Decoder(WorkerInfo)


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _ids(members: Any) -> list[str]:
    """Ids from a ZSCAN page: [id, score, ...] from the RESP connection, (id, score) pairs
    from redis-py's cluster client."""
    paired = bool(members) and isinstance(members[0], tuple)
    return [(m[0] if paired else m).decode() for m in (members if paired else members[::2])]


class RedisReadSide:
    """What handles, the CLI and the dashboard read; the broker supplies the plumbing."""

    clock: Clock
    _redis: RedisConnection
    _global: str

    def _queue(self, name: str) -> QueueKeys:
        raise NotImplementedError

    async def _all_queues(self) -> list[QueueKeys]:
        raise NotImplementedError

    @staticmethod
    def _decode(queue: QueueKeys, raw: Any, job_id: str) -> JobRecord | None:
        raise NotImplementedError

    async def ids_starting_with(self, prefix: str, limit: int) -> list[str]:
        """Every job is in one of its queue's state sets: scan them all together, a page
        of each set a round trip, until every scan ends or enough ids are found."""
        pattern = _glob_escape(prefix) + "*"
        found: set[str] = set()
        with self._redis.errors("looking up job ids"):
            # Each state's set; the expiry set (the last) repeats the finished ones.
            scans: dict[str, Any] = {k: 0 for q in await self._all_queues() for k in q.keys[:-1]}
            while scans and len(found) < limit:
                replies = await self._redis.pipeline(
                    [
                        ("ZSCAN", key, cursor, "MATCH", pattern, "COUNT", 1000)
                        for key, cursor in scans.items()
                    ]
                )
                for key, (cursor, members) in zip(list(scans), replies, strict=True):
                    found.update(_ids(members))
                    if int(cursor) == 0:
                        del scans[key]
                    else:
                        scans[key] = cursor
        return sorted(found)[:limit]

    async def list_jobs(
        self, *, status: JobStatus | None = None, queue: str | None = None, limit: int = 50
    ) -> list[JobRecord]:
        now = self.clock.now()
        with self._redis.errors("listing jobs"):
            queues = [self._queue(queue)] if queue is not None else await self._all_queues()
            per_queue = [self._candidates(q, status, now, limit) for q in queues]
            replies = iter(await self._redis.pipeline([c for cs in per_queue for c in cs]))
            wanted: list[tuple[QueueKeys, str]] = []
            for q, candidates in zip(queues, per_queue, strict=True):
                ids = dict.fromkeys(i for _ in candidates for i in next(replies))
                wanted += [(q, i.decode()) for i in ids]
            raws = await self._redis.pipeline([("HGETALL", q.job(i)) for q, i in wanted])
        jobs = [
            job
            for (q, i), raw in zip(wanted, raws, strict=True)
            if (job := self._decode(q, raw, i)) is not None
            and (status is None or job.status_at(now) == status)
        ]
        if status in (JobStatus.SCHEDULED, JobStatus.RETRYING):  # in the order they fall due
            jobs.sort(key=lambda j: (j.run_at, -j.priority, j.id))
        elif status in WAITING:
            jobs.sort(key=lambda j: (-j.priority, j.run_at, j.id))
        else:  # newest first, and of jobs that changed at the same time the last enqueued
            jobs.sort(key=lambda j: (j.finished_at or j.started_at or j.enqueued_at, j.id))
            jobs.reverse()
        return jobs[:limit]

    @staticmethod
    def _candidates(
        q: QueueKeys, status: JobStatus | None, now: float, limit: int
    ) -> list[tuple[Any, ...]]:
        """Commands that name the jobs a listing may show from one queue, always as many."""
        ready, scheduled, retrying, running, *finished, _ = q.keys
        sets = dict(zip(("succeeded", "cancelled", "failed"), finished, strict=True))
        due = ("-inf", repr(now), "LIMIT", 0, LIST_SCAN)
        later = (f"({now!r}", "+inf", "LIMIT", 0, LIST_SCAN)
        if status == JobStatus.QUEUED:
            return [
                ("ZRANGE", ready, 0, limit - 1),
                ("ZRANGEBYSCORE", scheduled, *due),
                ("ZRANGEBYSCORE", retrying, *due),
            ]
        if status == JobStatus.SCHEDULED:
            return [("ZRANGEBYSCORE", scheduled, *later)]
        if status == JobStatus.RETRYING:
            return [("ZRANGEBYSCORE", retrying, *later)]
        if status == JobStatus.RUNNING:
            return [("ZRANGE", running, 0, LIST_SCAN - 1)]
        if status is not None:
            return [("ZREVRANGE", sets[str(status)], 0, limit - 1)]
        waiting = [("ZRANGE", key, 0, LIST_SCAN - 1) for key in (ready, scheduled, retrying)]
        done = [("ZREVRANGE", key, 0, limit - 1) for key in finished]
        return [*waiting, ("ZRANGE", running, 0, LIST_SCAN - 1), *done]

    async def stats(self) -> QueueStats:
        now = repr(self.clock.now())
        with self._redis.errors("counting jobs"):
            queues = await self._all_queues()
            commands: list[tuple[Any, ...]] = []
            for q in queues:
                ready, scheduled, retrying, running, succeeded, cancelled, failed, _ = q.keys
                commands += [
                    ("ZCARD", ready),
                    ("ZCOUNT", scheduled, "-inf", now),
                    ("ZCOUNT", retrying, "-inf", now),
                    ("ZCOUNT", scheduled, f"({now}", "+inf"),
                    ("ZCOUNT", retrying, f"({now}", "+inf"),
                    *[("ZCARD", key) for key in (running, succeeded, cancelled, failed)],
                ]
            replies = await self._redis.pipeline(commands)
        stats: QueueStats = {}
        for n, q in enumerate(queues):
            ready, due, due_retry, *rest = replies[n * 9 : n * 9 + 9]
            counts = zip(_STATS_ORDER, (ready + due + due_retry, *rest), strict=True)
            found = {status: count for status, count in counts if count}
            if found:
                stats[q.name] = found
        return stats

    async def register_worker(self, info: WorkerInfo) -> None:
        workers = f"{self._global}workers"
        with self._redis.errors("registering a worker"):
            await self._redis.pipeline(
                [
                    ("ZADD", workers, repr(info.last_seen), info.id),
                    ("SET", f"{self._global}worker:{info.id}", msgspec.json.encode(info)),
                    ("EXPIRE", f"{self._global}worker:{info.id}", WORKER_TTL),
                    ("ZREMRANGEBYSCORE", workers, "-inf", f"({info.last_seen - WORKER_TTL!r}"),
                ]
            )

    async def unregister_worker(self, worker_id: str) -> None:
        with self._redis.errors("unregistering a worker"):
            await self._redis.pipeline(
                [
                    ("ZREM", f"{self._global}workers", worker_id),
                    ("DEL", f"{self._global}worker:{worker_id}"),
                ]
            )

    async def workers(self, alive_within: float) -> list[WorkerInfo]:
        cutoff = repr(self.clock.now() - alive_within)
        with self._redis.errors("listing workers"):
            [ids] = await self._redis.pipeline(
                [("ZRANGEBYSCORE", f"{self._global}workers", cutoff, "+inf")]
            )
            if not ids:
                return []
            [infos] = await self._redis.pipeline(
                [("MGET", *[f"{self._global}worker:{i.decode()}" for i in ids])]
            )
        found = [_worker_decoder.decode(i) for i in infos if i is not None]
        return sorted(found, key=lambda w: w.id)
