"""``redis://``, ``rediss://``, ``unix://``: jobs in Redis, shared by workers on many machines.

Why this shape:

* Each queue keeps its waiting jobs in a sorted set whose score is priority,
  then run time, so ``ZPOPMIN`` hands out jobs in exactly the order SQLite's
  index gives; delayed and retrying jobs wait in sorted sets by run time and
  the claim script moves the due ones over, so they live in Redis, never in a
  worker's memory.
* Every state change (enqueue with its unique-key check, claim, extend, each
  outcome, lease recovery, cancel, retry, purge) is one Lua script in
  ``redis.lua``, whose header documents the keys: atomic without WATCH loops,
  and one round trip; batches pipeline them (``redis_connection.py``).
* Idle workers do not poll: they ``BLPOP`` on per-queue wake lists that
  enqueue (inside its script, on a single server), retry and requeue push a
  token to in the same round trip, with a
  timeout no longer than the time until the next delayed job is due. A token
  left when nobody waited costs at most one empty claim later. The lists are
  per queue (not one per app) so a job wakes only workers that serve its
  queue; they share the app's hash tag, so one ``BLPOP`` covers all of a
  worker's queues even on a cluster.
* ``wait()`` (``job.result()``) registers interest and blocks on a per-job
  list the finishing script pushes to, so a result arrives across processes
  at once without polling.
* No per-job index: a job's key names its queue, and a process finds the
  queue of a job it did not enqueue or claim itself by asking every queue in
  one round trip. A job is its hash and its place in a sorted set, nothing
  else, so memory and work per job stay small.
* Cluster-ready: a queue's keys share the hash tag ``{prefix:queue}``; the
  registry, the workers and the wake lists live elsewhere, and on a cluster
  are written by plain commands beside the scripts, never inside them. A job
  id and a unique key are therefore unique per queue on Redis (SQLite and
  memory check them across queues); the ids afterwork makes never meet.

Options in the URL: ``?prefix=myapp`` (several apps on one Redis; letters,
digits, ``_.-``), ``?cluster=yes`` (a Redis Cluster, any node's address), and
the connection's: ``socket_timeout``, ``socket_connect_timeout``,
``client_name`` and, for ``rediss://``, ``ssl_cert_reqs``, ``ssl_ca_certs``,
``ssl_ca_path``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from .. import lifecycle
from ..defaults import DEFAULT_QUEUE
from ..errors import CorruptJob
from ..job import FINISHED, ErrorInfo, JobRecord, JobStatus, error_type
from .base import (
    Broker,
    Outcome,
    OutcomeKind,
    ScheduleState,
    redact,
)
from .redis_codec import as_dict, decode_job, encode_job
from .redis_connection import RedisConnection, parse_redis_url
from .redis_keys import QueueKeys
from .redis_read import RedisReadSide

logger = logging.getLogger("afterwork.brokers.redis")
CORRUPT_JOB = error_type(CorruptJob)

#: A wake list never holds more tokens than this: enough to wake that many idle
#: workers for a batch, few enough that stale tokens cost little.
WAKE_TOKENS = 64
#: At most this many due delayed jobs move to ready per claim, and this many
#: finished jobs or lost leases are handled per queue per recover().
BATCH_MAX = 1000
#: A batch is settled by one script call per queue and this many jobs.
SCRIPT_CHUNK = 500
#: ... and stored by one per this many: smaller, so Redis can start on the first
#: while the next is being built.
ENQUEUE_CHUNK = 50
#: A finished job's hash expires this long after its TTL, in case no worker runs
#: recover() (which deletes it on time, by the broker's clock).
EXPIRY_GRACE = 60.0
#: A producer adds the queues it uses to the registry this often (seconds).
REGISTER_EVERY = 60.0
#: Blocking reads are cut into pieces no longer than this, well inside the socket timeout.
BLOCK_CHUNK = 10.0
#: Jobs this broker enqueued or claimed, remembered with their queue so settle,
#: extend and a handle's calls need no look-up; forgotten when settled, and all
#: of them past this many.
_SEEN_MAX = 100_000

_error_encoder = msgspec.json.Encoder()


def _store_args(job: JobRecord, now: float) -> list[Any]:
    """What the scripts' store() takes for a new job."""
    if job.run_at <= now:
        target = "ready"
    else:
        target = "retrying" if job.status == JobStatus.RETRYING else "scheduled"
    return [job.id, target, job.unique_key or "", *encode_job(job)]


class RedisBroker(RedisReadSide, Broker):
    unique_scope = "queue"

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        client_url, self.prefix, self.cluster = parse_redis_url(url)
        self._redis = RedisConnection(url, client_url, cluster=self.cluster)
        self._global = f"{{{self.prefix}}}:"
        self._queues: dict[str, QueueKeys] = {}
        self._registered: dict[str, float] = {}  # queue -> when to add it to the registry again
        self._seen: dict[str, str] = {}

    def describe(self) -> str:
        kind = "Redis Cluster" if self.cluster else "Redis"
        return f"{kind} {redact(self.url)}"

    async def connect(self) -> None:
        await self._redis.connect()

    async def close(self) -> None:
        await self._redis.close()

    # -- keys -----------------------------------------------------------------------------

    def _queue(self, name: str) -> QueueKeys:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = QueueKeys(self.prefix, name, self._redis)
        return queue

    def _wake(self, counts: dict[str, int]) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        for queue, count in counts.items():
            key = f"{self._global}wake:{queue}"
            commands.append(("LPUSH", key, *["1"] * min(count, WAKE_TOKENS)))
            commands.append(("LTRIM", key, 0, WAKE_TOKENS - 1))
        return commands

    async def _all_queues(self) -> list[QueueKeys]:
        [names] = await self._redis.pipeline([("SMEMBERS", f"{self._global}queues")])
        return [self._queue(n) for n in self._registry(names)]

    def _registry(self, members: Any) -> list[str]:
        """The registry's queue names; a queue this process added that is missing (a
        server that lost its data) is added again with the next enqueue."""
        names = sorted(n.decode() for n in members)
        for lost in [q for q in self._registered if q not in names]:
            del self._registered[lost]
        return names

    async def _locate(self, job_ids: Sequence[str]) -> dict[str, QueueKeys]:
        """The queues of jobs: known if this broker enqueued or claimed them, else asked
        of every queue it knows, and (for those still not found) of every queue there is."""
        found = {i: self._queue(q) for i in job_ids if (q := self._seen.get(i))}
        unknown = [i for i in dict.fromkeys(job_ids) if i not in found]
        if not unknown:
            return found
        known = list(self._queues.values())
        replies = await self._redis.pipeline(
            [("SMEMBERS", f"{self._global}queues")]
            + [("EXISTS", q.job(i)) for i in unknown for q in known]
        )
        found.update(self._found(unknown, known, replies[1:]))
        names = {q.name for q in known}
        others = [self._queue(n) for n in self._registry(replies[0]) if n not in names]
        unknown = [i for i in unknown if i not in found]
        if unknown and others:
            replies = await self._redis.pipeline(
                [("EXISTS", q.job(i)) for i in unknown for q in others]
            )
            found.update(self._found(unknown, others, replies))
        return found

    @staticmethod
    def _found(
        job_ids: Sequence[str], queues: Sequence[QueueKeys], exists: Sequence[int]
    ) -> dict[str, QueueKeys]:
        replies = iter(exists)
        found: dict[str, QueueKeys] = {}
        for job_id in job_ids:
            for queue in queues:
                if next(replies) and job_id not in found:
                    found[job_id] = queue
        return found

    @staticmethod
    def _decode(queue: QueueKeys, raw: Any, job_id: str) -> JobRecord | None:
        """A job hash (a dict, or a script's flat list) as a record; None if there is none."""
        fields = as_dict(raw)
        if not fields:
            return None
        return decode_job(fields, job_id, queue.name)[0]

    # -- write side -------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        if not jobs:
            return []
        now = self.clock.now()
        by_queue: dict[str, list[int]] = {}
        for n, job in enumerate(jobs):
            by_queue.setdefault(job.queue, []).append(n)
        # One script call per queue and chunk, so no call keeps Redis busy for long,
        # and Redis stores one chunk while the next is being built.
        chunks = [
            ns[i : i + ENQUEUE_CHUNK]
            for ns in by_queue.values()
            for i in range(0, len(ns), ENQUEUE_CHUNK)
        ]
        commands: Iterable[tuple[Any, ...]] = (self._enqueue_call(jobs, ns, now) for ns in chunks)
        if len(chunks) == 1:
            commands = list(commands)
        then, queues = self._announce(jobs)
        with self._redis.errors("enqueueing jobs"):
            replies = await self._redis.pipeline(commands, then)
            self._registered_now(queues)
            stored: list[Any] = [None] * len(jobs)
            for ns, per_job in zip(chunks, replies, strict=True):
                for n, reply in zip(ns, per_job, strict=True):
                    stored[n] = reply
            return self._stored(jobs, stored)

    def _enqueue_call(
        self, jobs: Sequence[JobRecord], ns: Sequence[int], now: float
    ) -> tuple[Any, ...]:
        queue = jobs[ns[0]].queue
        args: list[Any] = [self._wake_key(queue)]
        for n in ns:
            args += _store_args(jobs[n], now)
        return self._queue(queue).script("enqueue", *args)

    def _wake_key(self, queue: str) -> str:
        """enqueue's and claim_fire's first argument: on a single server the script
        pushes the wake tokens itself; on a cluster the list is in another slot."""
        return "" if self.cluster else f"{self._global}wake:{queue}"

    def _announce(self, jobs: Sequence[JobRecord]) -> tuple[list[tuple[Any, ...]], list[str]]:
        """Commands that wake workers for new jobs and add their queues to the registry,
        and those queues: pass them to :meth:`_registered_now` once the commands ran.

        A queue is added again every :data:`REGISTER_EVERY` seconds, so it is found
        again even if someone emptied Redis under a running app.
        """
        woken: dict[str, int] = {}
        for job in jobs:
            woken[job.queue] = woken.get(job.queue, 0) + 1
        commands = self._wake(woken) if self.cluster else []
        now = time.monotonic()
        queues = [q for q in woken if now >= self._registered.get(q, 0.0)]
        if queues:
            commands.append(("SADD", f"{self._global}queues", *queues))
        return commands, queues

    def _registered_now(self, queues: Sequence[str]) -> None:
        self._registered.update(dict.fromkeys(queues, time.monotonic() + REGISTER_EVERY))

    async def claim_fire(self, schedule: str, fire_at: float, job: JobRecord | None) -> bool:
        """The schedule's state lives in its job's queue slot, so recording the fire
        and storing its job are one script; a skipped fire (no job) goes where the
        schedule's state already is."""
        registry = f"{self._global}schedules"
        with self._redis.errors("recording a periodic fire"):
            if job is not None:
                queue = self._queue(job.queue)
            else:
                [known] = await self._redis.pipeline([("HGET", registry, schedule)])
                queue = self._queue(known.decode() if known else DEFAULT_QUEUE)
            args: tuple[Any, ...] = (self._wake_key(queue.name), schedule, repr(fire_at), "0")
            if job is not None:
                args = (*args[:-1], "1", *_store_args(job, self.clock.now()))
            then = [("HSET", registry, schedule, queue.name)]
            queues: list[str] = []
            if job is not None:
                announce, queues = self._announce([job])
                then += announce
            [reply] = await self._redis.pipeline([queue.script("claim_fire", *args)], then)
            self._registered_now(queues)
            won = bool(reply[0] == 1)
            if job is not None and won:
                self._stored([job], [reply[1]])
        return won

    async def schedule_states(self) -> dict[str, ScheduleState]:
        with self._redis.errors("reading periodic schedules"):
            [where] = await self._redis.pipeline([("HGETALL", f"{self._global}schedules")])
            where = as_dict(where)
            names = sorted(n.decode() for n in where)
            raws = await self._redis.pipeline(
                [
                    ("HGETALL", f"{self._queue(where[n.encode()].decode()).base}schedule:{n}")
                    for n in names
                ]
            )
        states: dict[str, ScheduleState] = {}
        for name, raw in zip(names, map(as_dict, raws), strict=True):
            if b"last_fire" in raw:
                last_job = raw.get(b"last_job")
                states[name] = ScheduleState(
                    name=name,
                    last_fire=float(raw[b"last_fire"]),
                    last_job=last_job.decode() if last_job else None,
                )
        return states

    def _stored(self, jobs: Sequence[JobRecord], replies: Sequence[Any]) -> list[JobRecord]:
        """What enqueue stored for each job, from store()'s replies.

        A stored job is returned as given: this broker keeps no record objects.
        """
        stored: list[JobRecord] = []
        for job, reply in zip(jobs, replies, strict=True):
            if reply == 1:
                self._remember(job.id, job.queue)
                stored.append(job)
            else:
                twin = self._decode(self._queue(job.queue), reply[2], reply[1].decode())
                assert twin is not None
                stored.append(twin)
        return stored

    async def reserve(
        self, queues: Sequence[str], limit: int, *, worker: str, lease: float, block: float = 0
    ) -> list[JobRecord]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block
        with self._redis.errors("claiming jobs"):
            while True:
                generation = self.ready_signal.generation
                jobs, next_due = await self._claim(queues, limit, worker, lease)
                remaining = deadline - loop.time()
                if jobs or remaining <= 0 or limit <= 0:
                    return jobs
                if next_due is not None:
                    remaining = min(remaining, max(next_due - self.clock.now(), 0.001))
                if await self._sleep(queues, remaining, generation):
                    return []

    async def _sleep(self, queues: Sequence[str], timeout: float, generation: int) -> bool:
        """Block until a wake token for one of ``queues`` arrives or ``timeout`` passes;
        True if :meth:`wake` was called (this process wants its workers to stop waiting)."""
        wake = [f"{self._global}wake:{q}" for q in dict.fromkeys(queues)]
        block = max(min(timeout, BLOCK_CHUNK), 0.001)  # BLPOP's timeout 0 would mean forever
        pop = asyncio.ensure_future(self._redis.block(("BLPOP", *wake, block), block))
        woken = asyncio.ensure_future(self.ready_signal.wait(generation, BLOCK_CHUNK + 1))
        try:
            await asyncio.wait({pop, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pop, woken):
                task.cancel()  # a BLPOP cut short costs its connection, only on wake()
            await asyncio.gather(pop, woken, return_exceptions=True)
        error = pop.exception() if pop.done() and not pop.cancelled() else None
        if error is not None:
            raise error
        return woken.done() and not woken.cancelled() and woken.result()

    async def _claim(
        self, queues: Sequence[str], limit: int, worker: str, lease: float
    ) -> tuple[list[JobRecord], float | None]:
        now = self.clock.now()
        claimed: list[JobRecord] = []
        corrupt: list[Outcome] = []
        next_due: float | None = None
        for name in dict.fromkeys(queues):
            if len(claimed) >= limit:
                break
            queue = self._queue(name)
            until = now + lease
            args = (repr(now), worker, repr(until), limit - len(claimed), BATCH_MAX)
            [(found, due)] = await self._redis.pipeline([queue.script("claim", *args)])
            for raw_id, raw in found:
                record, problem = decode_job(as_dict(raw), raw_id.decode(), name)
                self._remember(record.id, name)
                if problem is None:
                    # The hash as it was: the claim's changes, as the script made them.
                    record.status = JobStatus.RUNNING
                    record.attempts += 1
                    record.worker, record.started_at, record.lease_until = worker, now, until
                    claimed.append(record)
                else:
                    error = ErrorInfo(CORRUPT_JOB, f"job {record.id} cannot be read: {problem}")
                    logger.error(
                        "job %s in queue %s cannot be read (%s); moved to the dead-letter queue",
                        record.id,
                        name,
                        problem,
                        extra={"job_id": record.id, "queue": name},
                    )
                    corrupt.append(
                        Outcome(
                            job_id=record.id, worker=worker, kind=OutcomeKind.FAILED, error=error
                        )
                    )
            if due is not None:
                next_due = min(float(due), next_due if next_due is not None else float("inf"))
        if corrupt:  # to the dead-letter queue with the reason; the worker goes on
            await self.settle(corrupt)
        return claimed, next_due

    def _remember(self, job_id: str, queue: str) -> None:
        if len(self._seen) >= _SEEN_MAX:
            self._seen.clear()
        self._seen[job_id] = queue

    async def extend(self, worker: str, job_ids: Sequence[str], lease: float) -> list[str]:
        if not job_ids:
            return []
        until = repr(self.clock.now() + lease)
        with self._redis.errors("renewing leases"):
            where = await self._locate(job_ids)
            by_queue: dict[str, list[str]] = {}
            for job_id in dict.fromkeys(job_ids):
                if job_id in where:
                    by_queue.setdefault(where[job_id].name, []).append(job_id)
            commands = [
                self._queue(q).script("extend", worker, until, *ids) for q, ids in by_queue.items()
            ]
            replies = await self._redis.pipeline(commands)
        lost = {i.decode() for reply in replies for i in reply}
        return [i for i in job_ids if i in lost or i not in where]

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        now = repr(self.clock.now())
        with self._redis.errors("settling outcomes"):
            where = await self._locate([o.job_id for o in outcomes])
            by_queue: dict[str, list[Any]] = {}
            woken: dict[str, int] = {}
            for o in outcomes:
                queue = where.get(o.job_id)
                if queue is None:
                    continue  # no such job (any more)
                error = "" if o.error is None else _error_encoder.encode(o.error)
                retry_at = repr(o.retry_at) if o.retry_at is not None else now
                has_result = "0" if o.result is None else "1"
                args = (o.job_id, o.worker, str(o.kind), has_result, o.result or b"", error)
                by_queue.setdefault(queue.name, []).extend((*args, retry_at))
                if o.kind in (OutcomeKind.RETRY, OutcomeKind.REQUEUE):
                    woken[queue.name] = woken.get(queue.name, 0) + 1
            ttls = (self.dead_letter_ttl, EXPIRY_GRACE)
            step = 7 * SCRIPT_CHUNK  # seven arguments an outcome
            commands = [
                self._queue(q).script("settle", now, *ttls, *args[i : i + step])
                for q, args in by_queue.items()
                for i in range(0, len(args), step)
            ]
            await self._redis.pipeline(commands, self._wake(woken))
        for o in outcomes:
            self._seen.pop(o.job_id, None)

    async def recover(self) -> int:
        now = self.clock.now()
        with self._redis.errors("recovering lost jobs"):
            queues = await self._all_queues()
            replies = await self._redis.pipeline(
                [q.script("recover", repr(now), BATCH_MAX) for q in queues]
            )
            commands: list[tuple[Any, ...]] = []
            woken: dict[str, int] = {}
            for queue, lost in zip(queues, replies, strict=True):
                for raw_id, raw in lost:
                    job_id = raw_id.decode()
                    record = self._decode(queue, raw, job_id)
                    lost = record and lifecycle.lose_lease(
                        record, now=now, dead_letter_ttl=self.dead_letter_ttl
                    )
                    status = lost.status if lost else JobStatus.QUEUED
                    error = lost.fields.get("error") if lost else None
                    text = "" if error is None else _error_encoder.encode(error)
                    args = (job_id, repr(now), str(status), text)
                    commands.append(
                        queue.script("lease_lost", *args, self.dead_letter_ttl, EXPIRY_GRACE)
                    )
                    if status == JobStatus.QUEUED:
                        woken[queue.name] = woken.get(queue.name, 0) + 1
            results = await self._redis.pipeline(commands, self._wake(woken))
        return sum(results)

    # -- read side --------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        with self._redis.errors("reading a job"):
            queue = (await self._locate([job_id])).get(job_id)
            if queue is None:
                return None
            [raw] = await self._redis.pipeline([("HGETALL", queue.job(job_id))])
            return self._decode(queue, raw, job_id)

    async def _failed(self, job_ids: Sequence[str] | None) -> list[tuple[QueueKeys, str]]:
        if job_ids is None:
            queues = await self._all_queues()
            replies = await self._redis.pipeline([("ZRANGE", q.keys[6], 0, -1) for q in queues])
            return [(q, i.decode()) for q, ids in zip(queues, replies, strict=True) for i in ids]
        where = await self._locate(job_ids)
        return [(where[i], i) for i in dict.fromkeys(job_ids) if i in where]

    async def retry_failed(self, job_ids: Sequence[str] | None = None) -> int:
        with self._redis.errors("retrying dead letters"):
            failed = await self._failed(job_ids)
            now = repr(self.clock.now())
            replies = await self._redis.pipeline(
                [q.script("retry_failed", i, now) for q, i in failed],
                self._wake({q.name: 1 for q, _ in failed}),
            )
        return sum(replies)

    async def purge(self, job_ids: Sequence[str] | None = None) -> int:
        with self._redis.errors("purging dead letters"):
            failed = await self._failed(job_ids)
            replies = await self._redis.pipeline([q.script("purge", i) for q, i in failed])
        return sum(replies)

    async def cancel(self, job_id: str) -> bool:
        with self._redis.errors("cancelling a job"):
            queue = (await self._locate([job_id])).get(job_id)
            if queue is None:
                return False
            args = (job_id, repr(self.clock.now()), EXPIRY_GRACE)
            [reply] = await self._redis.pipeline([queue.script("cancel", *args)])
        return bool(reply)

    async def wait(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """Block on the job's ``done`` list, which the script that finishes it pushes to.

        Interest is registered in the same round trip as a look at the job, so a
        job that finishes between the look and the block still wakes the waiter;
        a job already finished costs one look.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        with self._redis.errors("waiting for a job"):
            queue = (await self._locate([job_id])).get(job_id)
            if queue is None:
                return None
            waiters, done = f"{queue.base}waiters:{job_id}", f"{queue.base}done:{job_id}"
            register = False
            while True:
                left = BLOCK_CHUNK if deadline is None else deadline - loop.time()
                chunk = min(left, BLOCK_CHUNK)
                commands: list[tuple[Any, ...]] = [("HGETALL", queue.job(job_id))]
                if register and chunk > 0:
                    ttl = int((chunk + 5) * 1000)
                    commands[:0] = [("INCR", waiters), ("PEXPIRE", waiters, ttl)]
                raw = (await self._redis.pipeline(commands))[-1]
                record = self._decode(queue, raw, job_id)
                if record is None or record.status in FINISHED or chunk <= 0:
                    if len(commands) > 1:  # finished meanwhile: nobody will take our token
                        await self._redis.pipeline([("DEL", waiters)])
                    return record
                if not register:
                    register = True  # look again, this time registered
                    continue
                # A token means the job finished (look without registering); none, time's up.
                block = max(chunk, 0.001)
                [token] = await self._redis.block(("BLPOP", done, block), block)
                register = token is None

    async def delete_all(self) -> int:
        """Delete every key under this broker's prefix: all jobs, queues and workers.

        For tests and for resetting a development server; there is no undo.
        """
        patterns = [f"{self._global}*", f"{{{self.prefix}:*"]
        with self._redis.errors("deleting keys"):
            keys = [k for p in patterns for k in await self._redis.keys_matching(p)]
            await self._redis.pipeline([("DEL", k) for k in keys])
        self._registered.clear()
        return len(keys)
