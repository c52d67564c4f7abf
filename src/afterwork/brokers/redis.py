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
  and one round trip. Scripts run by ``EVALSHA`` straight from pipelines (a
  redis-py ``Script`` in a pipeline costs a ``SCRIPT EXISTS`` round trip on
  every execution); after ``NOSCRIPT`` (a restarted server) they are loaded
  and the refused calls sent again.
* Idle workers do not poll: they ``BLPOP`` on per-queue wake lists that
  enqueue, retry and requeue push a token to in the same pipeline, with a
  timeout no longer than the time until the next delayed job is due. A token
  left when nobody waited costs at most one empty claim later. The lists are
  per queue (not one per app) so a job wakes only workers that serve its
  queue; they share the app's hash tag, so one ``BLPOP`` covers all of a
  worker's queues even on a cluster.
* ``wait()`` (``job.result()``) registers interest and blocks on a per-job
  list the finishing script pushes to, so a result arrives across processes
  at once without polling.
* Cluster-ready: a queue's keys share the hash tag ``{prefix:queue}``; the
  per-job index that lets ``get(id)`` find a job's queue, the registry, the
  workers and the wake lists live elsewhere and are written by plain commands
  beside the scripts, never inside them. A unique key is therefore unique
  per queue on Redis (SQLite and memory check it across queues).

Options in the URL: ``?prefix=myapp`` (several apps on one Redis; letters,
digits, ``_.-``) and ``?cluster=yes`` (a Redis Cluster, any node's address).
Other query options go to redis-py (``ssl_cert_reqs``, ``socket_timeout``...).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import re
import threading
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..defaults import DEFAULT_QUEUE
from ..errors import BrokerConnectionError, BrokerError, InvalidURL
from ..job import FINISHED, WAITING, ErrorInfo, JobRecord, JobStatus
from . import redact
from .base import (
    Broker,
    Outcome,
    OutcomeKind,
    QueueStats,
    ScheduleState,
    WorkerInfo,
    expired_lease_outcome,
)
from .redis_codec import decode_job, encode_job, pairs
from .sql import load_queries

#: Keys start with this unless the URL says ``?prefix=...``.
DEFAULT_PREFIX = "afterwork"
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: A wake list never holds more tokens than this: enough to wake that many idle
#: workers for a batch, few enough that stale tokens cost little.
WAKE_TOKENS = 64
#: At most this many due delayed jobs move to ready per claim, and this many
#: finished jobs or lost leases are handled per queue per recover().
BATCH_MAX = 1000
#: Listings of scheduled, running or all jobs look at this many per queue and set.
LIST_SCAN = 1000
#: A finished job's hash expires this long after its TTL, in case no worker runs
#: recover() (which deletes it on time, by the broker's clock).
EXPIRY_GRACE = 60.0
#: A producer adds the queues it uses to the registry this often (seconds).
REGISTER_EVERY = 60.0
#: A worker's registry entry outlives its last heartbeat by this long.
WORKER_TTL = 60
#: Blocking reads are cut into pieces no longer than this, well inside the socket timeout.
BLOCK_CHUNK = 10.0
SOCKET_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
#: Jobs this broker handed out, remembered with their queue so settle and extend
#: need no look-up; forgotten when settled, and all of them past this many.
_HANDED_OUT_MAX = 100_000

_SETS = ("ready", "scheduled", "retrying", "running", "succeeded", "cancelled", "failed", "expiry")
#: Scripts that use only the first few of the per-queue sets are sent only those.
_KEYS_USED = {"enqueue": 3, "claim_fire": 3, "discard": 3, "claim": 4, "extend": 4}
_SOURCE = load_queries("redis.lua")
_SCRIPTS = {
    name: f"{_SOURCE['common']}\n{body}" for name, body in _SOURCE.items() if name != "common"
}
_SHA = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in _SCRIPTS.items()}
_STATS_ORDER = ("queued", "scheduled", "retrying", "running", "succeeded", "cancelled", "failed")
_worker_decoder = msgspec.json.Decoder(WorkerInfo)
_msgpack = msgspec.msgpack.Encoder()
_error_encoder = msgspec.json.Encoder()


def parse_redis_url(url: str) -> tuple[str, str, bool]:
    """Split afterwork's options off a Redis URL: (URL for redis-py, key prefix, cluster)."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise InvalidURL(f"invalid Redis URL {redact(url)!r}: the port is not a number") from None
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise InvalidURL(
            f"invalid Redis URL {redact(url)!r}: the path must be a database number, as in "
            "redis://localhost:6379/0"
        )
    prefix, cluster, rest = DEFAULT_PREFIX, False, []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "prefix":
            if not _PREFIX.match(value):
                raise InvalidURL(
                    f"invalid Redis URL {redact(url)!r}: prefix must be 1 to 64 letters, "
                    f"digits, '_', '.' or '-'; got {value!r}"
                )
            prefix = value
        elif name == "cluster":
            if value.lower() not in ("yes", "true", "1", "no", "false", "0"):
                raise InvalidURL(f"invalid Redis URL {redact(url)!r}: cluster must be yes or no")
            cluster = value.lower() in ("yes", "true", "1")
        else:
            rest.append((name, value))
    return parts._replace(query=urlencode(rest)).geturl(), prefix, cluster


def _store_args(job: JobRecord, now: float) -> tuple[Any, ...]:
    """What the scripts' store() takes for a new job."""
    if job.run_at <= now:
        target = "ready"
    else:
        target = "retrying" if job.status == JobStatus.RETRYING else "scheduled"
    unique = ("0", "") if job.unique_key is None else ("1", job.unique_key)
    text, binary = encode_job(job)
    return (job.id, *unique, target, _msgpack.encode(text), *binary)


class _Queue:
    """One queue's key names: the hash-tagged base and its sets, in the scripts' KEYS order."""

    __slots__ = ("base", "keys", "name")

    def __init__(self, prefix: str, name: str) -> None:
        self.name = name
        self.base = f"{{{prefix}:{name}}}:"
        self.keys = tuple(self.base + s for s in _SETS)

    def script(self, name: str, *args: Any) -> tuple[Any, ...]:
        keys = self.keys[: _KEYS_USED.get(name, len(_SETS))]
        return ("EVALSHA", _SHA[name], len(keys), *keys, self.base, *args)

    def job(self, job_id: str) -> str:
        return f"{self.base}job:{job_id}"


class RedisBroker(Broker):
    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._client_url, self.prefix, self.cluster = parse_redis_url(url)
        self._global = f"{{{self.prefix}}}:"
        self._lock = threading.Lock()
        self._clients: dict[asyncio.AbstractEventLoop, tuple[Any, AsyncGenerator[None, None]]] = {}
        self._queues: dict[str, _Queue] = {}
        self._registered: dict[str, float] = {}  # queue -> when this broker last added it
        self._handed_out: dict[str, str] = {}
        self._scripts_loaded = False

    # -- connections --------------------------------------------------------------------

    def _new_client(self) -> Any:
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": SOCKET_TIMEOUT,
            "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        }
        if not self._client_url.startswith("unix:"):
            options["socket_keepalive"] = True
        if self.cluster:
            return RedisCluster.from_url(self._client_url, max_connections=1000, **options)
        return aioredis.Redis.from_url(self._client_url, health_check_interval=30, **options)

    async def _client(self) -> Any:
        """This event loop's client: redis-py's asyncio clients belong to one loop.

        Each comes with an async generator the loop closes when it shuts down
        (``asyncio.run`` does), which closes the client with its loop.
        """
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            with self._lock:
                for stale in [lp for lp in self._clients if lp.is_closed()]:
                    del self._clients[stale]  # closed without shutting down: nothing to do
                entry = self._clients.get(loop)
                created = entry is None
                if entry is None:
                    client = self._new_client()
                    entry = self._clients[loop] = (client, self._closer(loop, client))
            if created:
                await anext(entry[1])
        return entry[0]

    async def _closer(
        self, loop: asyncio.AbstractEventLoop, client: Any
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                if self._clients.get(loop, (None,))[0] is client:
                    del self._clients[loop]
            with contextlib.suppress(Exception):
                await client.aclose()

    async def connect(self) -> None:
        if asyncio.get_running_loop() in self._clients and self._scripts_loaded:
            return
        try:
            client = await self._client()
            await asyncio.wait_for(client.ping(), CONNECT_TIMEOUT)
            if not self._scripts_loaded:
                await self._load_scripts(client)
        except (RedisError, OSError, ValueError, TypeError, TimeoutError) as exc:
            with self._lock:
                entry = self._clients.pop(asyncio.get_running_loop(), None)
            if entry is not None:
                await entry[1].aclose()
            raise BrokerConnectionError(
                f"cannot connect to Redis at {redact(self.url)}: {exc}; check the address, "
                "the password and that the server is running"
            ) from exc

    async def _load_scripts(self, client: Any) -> None:
        for name, text in _SCRIPTS.items():
            sha = await client.script_load(text)
            if sha != _SHA[name]:  # pragma: no cover (Redis and hashlib agree on SHA1)
                raise BrokerError(f"Redis gave script {name} the digest {sha}, not {_SHA[name]}")
        self._scripts_loaded = True

    async def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
            self._scripts_loaded = False
        current = asyncio.get_running_loop()
        for loop, (_, closer) in clients.items():
            with contextlib.suppress(Exception):
                if loop is current:
                    await closer.aclose()
                elif loop.is_running():
                    done = asyncio.run_coroutine_threadsafe(closer.aclose(), loop)
                    await asyncio.wait_for(asyncio.wrap_future(done), 1.0)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn redis-py's errors into afterwork's, naming the server without its password."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise BrokerConnectionError(
                f"lost the connection to Redis at {redact(self.url)} while {action}: {exc}"
            ) from exc
        except RedisError as exc:
            raise BrokerError(f"Redis at {redact(self.url)} failed while {action}: {exc}") from exc

    async def _pipeline(
        self, commands: Sequence[tuple[Any, ...]], then: Sequence[tuple[Any, ...]] = ()
    ) -> list[Any]:
        """Run ``commands`` and then ``then`` in one round trip; return the commands' replies.

        A cluster pipeline runs each node's part in parallel, so there ``then``
        (wake-ups) waits for the commands, or a worker could wake before its job exists.
        """
        client = await self._client()
        if self.cluster:
            results = await self._send(client, commands)
        else:
            results = (await self._send(client, [*commands, *then]))[: len(commands)]
        refused = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if refused:  # the server lost its scripts (a restart): load them, send those again
            await self._load_scripts(client)
            again = await self._send(client, [commands[i] for i in refused])
            for i, result in zip(refused, again, strict=True):
                results[i] = result
        if self.cluster or refused:
            await self._send(client, then)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    @staticmethod
    async def _send(client: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        if not commands:
            return []
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    # -- keys -----------------------------------------------------------------------------

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(self.prefix, name)
        return queue

    def _where(self, job_id: str) -> str:
        return f"{self.prefix}:where:{job_id}"

    def _wake(self, counts: dict[str, int]) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        for queue, count in counts.items():
            key = f"{self._global}wake:{queue}"
            commands.append(("LPUSH", key, *["1"] * min(count, WAKE_TOKENS)))
            commands.append(("LTRIM", key, 0, WAKE_TOKENS - 1))
        return commands

    async def _all_queues(self) -> list[_Queue]:
        names = await (await self._client()).smembers(f"{self._global}queues")
        return [self._queue(n.decode()) for n in sorted(names)]

    async def _locate(self, job_ids: Sequence[str]) -> dict[str, _Queue]:
        """The queues of jobs: from those this broker handed out, else the per-job index."""
        found = {i: self._queue(q) for i in job_ids if (q := self._handed_out.get(i))}
        unknown = [i for i in dict.fromkeys(job_ids) if i not in found]
        replies = await self._pipeline([("GET", self._where(i)) for i in unknown])
        found.update(
            {i: self._queue(q.decode()) for i, q in zip(unknown, replies, strict=True) if q}
        )
        return found

    @staticmethod
    def _decode(queue: _Queue, raw: Any, job_id: str | None = None) -> JobRecord | None:
        """A job hash (a dict, or a script's flat list) as a record; None if there is none."""
        fields = pairs(raw) if isinstance(raw, list) else raw
        if not fields:
            return None
        if job_id is None:
            job_id = fields.get(b"id", b"?").decode(errors="replace")
        return decode_job(fields, job_id, queue.name)[0]

    # -- write side -------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        if not jobs:
            return []
        now = self.clock.now()
        commands: list[tuple[Any, ...]] = []
        for job in jobs:
            commands.append(self._queue(job.queue).script("enqueue", *_store_args(job, now)))
            commands.append(("SET", self._where(job.id), job.queue, "NX"))
        then, queues = self._announce(jobs)
        with self._errors("enqueueing jobs"):
            replies = await self._pipeline(commands, then)
            self._registered_now(queues)
            return await self._stored(jobs, replies)

    def _announce(self, jobs: Sequence[JobRecord]) -> tuple[list[tuple[Any, ...]], list[str]]:
        """Commands that wake workers for new jobs and add their queues to the registry,
        and those queues: pass them to :meth:`_registered_now` once the commands ran.

        A queue is added again every :data:`REGISTER_EVERY` seconds, so it is found
        again even if someone emptied Redis under a running app.
        """
        woken: dict[str, int] = {}
        for job in jobs:
            woken[job.queue] = woken.get(job.queue, 0) + 1
        commands = self._wake(woken)
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
        with self._errors("recording a periodic fire"):
            if job is not None:
                queue = self._queue(job.queue)
            else:
                known = await (await self._client()).hget(registry, schedule)
                queue = self._queue(known.decode() if known else DEFAULT_QUEUE)
            args: tuple[Any, ...] = (schedule, repr(fire_at), "0")
            if job is not None:
                args = (schedule, repr(fire_at), "1", *_store_args(job, self.clock.now()))
            then = [("HSET", registry, schedule, queue.name)]
            commands = [queue.script("claim_fire", *args)]
            queues: list[str] = []
            if job is not None:
                commands.append(("SET", self._where(job.id), job.queue, "NX"))
                announce, queues = self._announce([job])
                then += announce
            replies = await self._pipeline(commands, then)
            self._registered_now(queues)
            won = bool(replies[0][0] == 1)
            if job is not None and won:
                await self._stored([job], [replies[0][1], replies[1]])
            elif job is not None and replies[1]:  # lost the race: its index entry must go
                await self._pipeline([("DEL", self._where(job.id))])
        return won

    async def schedule_states(self) -> dict[str, ScheduleState]:
        with self._errors("reading periodic schedules"):
            where = await (await self._client()).hgetall(f"{self._global}schedules")
            names = sorted(n.decode() for n in where)
            raws = await self._pipeline(
                [
                    ("HGETALL", f"{self._queue(where[n.encode()].decode()).base}schedule:{n}")
                    for n in names
                ]
            )
        states: dict[str, ScheduleState] = {}
        for name, raw in zip(names, raws, strict=True):
            if b"last_fire" in raw:
                last_job = raw.get(b"last_job")
                states[name] = ScheduleState(
                    name=name,
                    last_fire=float(raw[b"last_fire"]),
                    last_job=last_job.decode() if last_job else None,
                )
        return states

    async def _stored(self, jobs: Sequence[JobRecord], replies: list[Any]) -> list[JobRecord]:
        """What enqueue stored for each job, mending the per-job index where it must."""
        stored: list[JobRecord] = []
        orphans: list[tuple[Any, ...]] = []
        for job, reply, indexed in zip(jobs, replies[::2], replies[1::2], strict=True):
            queue = self._queue(job.queue)
            if reply[0] == 1:
                if not indexed and (await self._locate([job.id])).get(job.id) is not queue:
                    # This id is already a job in another queue: that one stands.
                    await self._pipeline([queue.script("discard", job.id)])
                    twin = await self.get(job.id)
                    stored.append(twin if twin is not None else copy.copy(job))
                else:
                    stored.append(copy.copy(job))
                continue
            twin = self._decode(queue, reply[1])
            assert twin is not None
            if indexed and twin.id != job.id:  # not stored: its index entry must go
                orphans.append(("DEL", self._where(job.id)))
            stored.append(twin)
        await self._pipeline(orphans)
        return stored

    async def reserve(
        self, queues: Sequence[str], limit: int, *, worker: str, lease: float, block: float = 0
    ) -> list[JobRecord]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block
        with self._errors("claiming jobs"):
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
        client = await self._client()
        wake = [f"{self._global}wake:{q}" for q in dict.fromkeys(queues)]
        # BLPOP's timeout 0 would mean forever.
        pop = asyncio.ensure_future(client.blpop(wake, max(min(timeout, BLOCK_CHUNK), 0.001)))
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
            args = (repr(now), worker, repr(now + lease), limit - len(claimed), BATCH_MAX)
            [(found, due)] = await self._pipeline([queue.script("claim", *args)])
            for raw_id, raw in found:
                record, problem = decode_job(pairs(raw), raw_id.decode(), name)
                self._remember(record.id, name)
                if problem is None:
                    claimed.append(record)
                else:
                    error = ErrorInfo("CorruptJob", f"job {record.id} cannot be read: {problem}")
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
        if len(self._handed_out) >= _HANDED_OUT_MAX:
            self._handed_out.clear()
        self._handed_out[job_id] = queue

    async def extend(self, worker: str, job_ids: Sequence[str], lease: float) -> list[str]:
        if not job_ids:
            return []
        until = repr(self.clock.now() + lease)
        with self._errors("renewing leases"):
            where = await self._locate(job_ids)
            by_queue: dict[str, list[str]] = {}
            for job_id in dict.fromkeys(job_ids):
                if job_id in where:
                    by_queue.setdefault(where[job_id].name, []).append(job_id)
            commands = [
                self._queue(q).script("extend", worker, until, *ids) for q, ids in by_queue.items()
            ]
            replies = await self._pipeline(commands)
        lost = {i.decode() for reply in replies for i in reply}
        return [i for i in job_ids if i in lost or i not in where]

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        now = repr(self.clock.now())
        with self._errors("settling outcomes"):
            where = await self._locate([o.job_id for o in outcomes])
            commands: list[tuple[Any, ...]] = []
            woken: dict[str, int] = {}
            for o in outcomes:
                queue = where.get(o.job_id)
                if queue is None:
                    continue  # no such job (any more)
                error = "" if o.error is None else _error_encoder.encode(o.error)
                retry_at = repr(o.retry_at) if o.retry_at is not None else now
                has_result = "0" if o.result is None else "1"
                result = o.result or b""
                args = (o.job_id, o.worker, str(o.kind), now, has_result, result, error, retry_at)
                commands.append(queue.script("settle", *args, self.dead_letter_ttl, EXPIRY_GRACE))
                if o.kind in (OutcomeKind.RETRY, OutcomeKind.REQUEUE):
                    woken[queue.name] = woken.get(queue.name, 0) + 1
            await self._pipeline(commands, self._wake(woken))
        for o in outcomes:
            self._handed_out.pop(o.job_id, None)

    async def recover(self) -> int:
        now = self.clock.now()
        with self._errors("recovering lost jobs"):
            queues = await self._all_queues()
            replies = await self._pipeline(
                [q.script("recover", repr(now), BATCH_MAX) for q in queues]
            )
            commands: list[tuple[Any, ...]] = []
            cleanup: list[tuple[Any, ...]] = []
            woken: dict[str, int] = {}
            for queue, (deleted, lost) in zip(queues, replies, strict=True):
                cleanup += [("DEL", self._where(i.decode())) for i in deleted]
                for raw_id, raw in lost:
                    job_id = raw_id.decode()
                    record = self._decode(queue, raw, job_id)
                    status, error = (
                        expired_lease_outcome(record, now) if record else (JobStatus.QUEUED, None)
                    )
                    text = "" if error is None else _error_encoder.encode(error)
                    args = (job_id, repr(now), str(status), text)
                    commands.append(
                        queue.script("lease_lost", *args, self.dead_letter_ttl, EXPIRY_GRACE)
                    )
                    if status == JobStatus.QUEUED:
                        woken[queue.name] = woken.get(queue.name, 0) + 1
            results = await self._pipeline(commands, [*cleanup, *self._wake(woken)])
        return sum(results)

    # -- read side --------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        with self._errors("reading a job"):
            queue = (await self._locate([job_id])).get(job_id)
            if queue is None:
                return None
            return self._decode(
                queue, await (await self._client()).hgetall(queue.job(job_id)), job_id
            )

    async def list_jobs(
        self, *, status: JobStatus | None = None, queue: str | None = None, limit: int = 50
    ) -> list[JobRecord]:
        now = self.clock.now()
        with self._errors("listing jobs"):
            queues = [self._queue(queue)] if queue is not None else await self._all_queues()
            per_queue = [self._candidates(q, status, now, limit) for q in queues]
            replies = iter(await self._pipeline([c for cs in per_queue for c in cs]))
            wanted: list[tuple[_Queue, str]] = []
            for q, candidates in zip(queues, per_queue, strict=True):
                ids = dict.fromkeys(i for _ in candidates for i in next(replies))
                wanted += [(q, i.decode()) for i in ids]
            raws = await self._pipeline([("HGETALL", q.job(i)) for q, i in wanted])
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
        q: _Queue, status: JobStatus | None, now: float, limit: int
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
        with self._errors("counting jobs"):
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
            replies = await self._pipeline(commands)
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
        with self._errors("registering a worker"):
            await self._pipeline(
                [
                    ("ZADD", workers, repr(info.last_seen), info.id),
                    ("SET", f"{self._global}worker:{info.id}", msgspec.json.encode(info)),
                    ("EXPIRE", f"{self._global}worker:{info.id}", WORKER_TTL),
                    ("ZREMRANGEBYSCORE", workers, "-inf", f"({info.last_seen - WORKER_TTL!r}"),
                ]
            )

    async def unregister_worker(self, worker_id: str) -> None:
        with self._errors("unregistering a worker"):
            await self._pipeline(
                [
                    ("ZREM", f"{self._global}workers", worker_id),
                    ("DEL", f"{self._global}worker:{worker_id}"),
                ]
            )

    async def workers(self, alive_within: float) -> list[WorkerInfo]:
        cutoff = repr(self.clock.now() - alive_within)
        with self._errors("listing workers"):
            client = await self._client()
            ids = await client.zrangebyscore(f"{self._global}workers", cutoff, "+inf")
            if not ids:
                return []
            infos = await client.mget([f"{self._global}worker:{i.decode()}" for i in ids])
        found = [_worker_decoder.decode(i) for i in infos if i is not None]
        return sorted(found, key=lambda w: w.id)

    async def _failed(self, job_ids: Sequence[str] | None) -> list[tuple[_Queue, str]]:
        if job_ids is None:
            queues = await self._all_queues()
            replies = await self._pipeline([("ZRANGE", q.keys[6], 0, -1) for q in queues])
            return [(q, i.decode()) for q, ids in zip(queues, replies, strict=True) for i in ids]
        where = await self._locate(job_ids)
        return [(where[i], i) for i in dict.fromkeys(job_ids) if i in where]

    async def retry_failed(self, job_ids: Sequence[str] | None = None) -> int:
        with self._errors("retrying dead letters"):
            failed = await self._failed(job_ids)
            now = repr(self.clock.now())
            replies = await self._pipeline(
                [q.script("retry_failed", i, now) for q, i in failed],
                self._wake({q.name: 1 for q, _ in failed}),
            )
        return sum(replies)

    async def purge(self, job_ids: Sequence[str] | None = None) -> int:
        with self._errors("purging dead letters"):
            failed = await self._failed(job_ids)
            replies = await self._pipeline([q.script("purge", i) for q, i in failed])
            gone = [i for (_, i), r in zip(failed, replies, strict=True) if r == 1]
            await self._pipeline([("DEL", self._where(i)) for i in gone])
        return len(gone)

    async def cancel(self, job_id: str) -> bool:
        with self._errors("cancelling a job"):
            queue = (await self._locate([job_id])).get(job_id)
            if queue is None:
                return False
            args = (job_id, repr(self.clock.now()), EXPIRY_GRACE)
            [reply] = await self._pipeline([queue.script("cancel", *args)])
        return bool(reply)

    async def wait(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """Block on the job's ``done`` list, which the script that finishes it pushes to.

        Interest is registered in the same round trip as a look at the job, so a
        job that finishes between the look and the block still wakes the waiter;
        a job already finished costs one look.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        with self._errors("waiting for a job"):
            queue = (await self._locate([job_id])).get(job_id)
            if queue is None:
                return None
            waiters, done = f"{queue.base}waiters:{job_id}", f"{queue.base}done:{job_id}"
            client = await self._client()
            register = False
            while True:
                left = BLOCK_CHUNK if deadline is None else deadline - loop.time()
                chunk = min(left, BLOCK_CHUNK)
                commands: list[tuple[Any, ...]] = [("HGETALL", queue.job(job_id))]
                if register and chunk > 0:
                    ttl = int((chunk + 5) * 1000)
                    commands[:0] = [("INCR", waiters), ("PEXPIRE", waiters, ttl)]
                raw = (await self._pipeline(commands))[-1]
                record = self._decode(queue, raw, job_id)
                if record is None or record.status in FINISHED or chunk <= 0:
                    if len(commands) > 1:  # finished meanwhile: nobody will take our token
                        await self._pipeline([("DEL", waiters)])
                    return record
                if not register:
                    register = True  # look again, this time registered
                    continue
                # A token means the job finished (look without registering); none, time's up.
                register = await client.blpop([done], max(chunk, 0.001)) is None

    async def delete_all(self) -> int:
        """Delete every key under this broker's prefix: all jobs, queues and workers.

        For tests and for resetting a development server; there is no undo.
        """
        patterns = [f"{self._global}*", f"{{{self.prefix}:*", f"{self.prefix}:where:*"]
        with self._errors("deleting keys"):
            client = await self._client()
            keys = [k for p in patterns async for k in client.scan_iter(match=p, count=1000)]
            await self._pipeline([("DEL", k) for k in keys])
        self._registered.clear()
        return len(keys)
