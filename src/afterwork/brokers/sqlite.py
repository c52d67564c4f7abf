"""``sqlite:///path.db``: the embedded default; a file, no server, survives restarts.

Each thread that uses a broker gets its own connection and runs statements
itself: they take microseconds, less than a hop to another thread. A write
that finds another process holding the write lock does not wait on the event
loop: it is retried in a worker thread, which waits (up to the busy timeout)
while the loop goes on. WAL lets readers go on meanwhile. Jobs enqueued in this process wake waiting
workers at once through a signal shared by every broker on the same file;
other processes' writes are noticed by ``PRAGMA data_version``, checked every
few milliseconds while idle.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec

from .. import lifecycle
from ..defaults import SQLITE_BUSY_TIMEOUT_MS, SQLITE_POLL_INTERVAL, WORKER_FORGOTTEN_AFTER
from ..errors import BrokerConnectionError, InvalidURL
from ..job import WAITING, ErrorInfo, JobRecord, JobStatus
from .base import (
    Broker,
    Outcome,
    OutcomeKind,
    QueueStats,
    ScheduleState,
    WorkerInfo,
)
from .notify import Notifier
from .sql import load_queries

T = TypeVar("T")
Q = load_queries("sqlite.sql")
_FIELDS = tuple(JobRecord.__struct_fields__)
_SCHEMA_VERSION = 2  # 2: periodic schedules
_error_encoder = msgspec.json.Encoder()
_error_decoder = msgspec.json.Decoder(ErrorInfo)
_worker_decoder = msgspec.json.Decoder(WorkerInfo)

# Every broker on the same file in this process shares its signals.
_signals: dict[str, tuple[Notifier, Notifier]] = {}
_signals_lock = threading.Lock()

# What recover() does to a job whose lease ran out, by the status it gets.
_LEASE_LOST = {
    JobStatus.QUEUED: "lease_lost_requeue",
    JobStatus.FAILED: "lease_lost_fail",
    JobStatus.CANCELLED: "lease_lost_cancel",
}

# Jobs not waiting are listed by when they last changed: finished, started or enqueued.
_NEWEST_FIRST = "coalesce(finished_at, started_at, enqueued_at) DESC, seq DESC"

# What a user-facing status means in terms of stored status and run time.
_STATUS_FILTERS = {
    JobStatus.QUEUED: (
        "(status = 'queued' OR (status IN ('scheduled', 'retrying') AND run_at <= :now))"
    ),
    JobStatus.SCHEDULED: "(status = 'scheduled' AND run_at > :now)",
    JobStatus.RETRYING: "(status = 'retrying' AND run_at > :now)",
}


def sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` is relative to the working directory, ``sqlite:////abs.db`` absolute."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.lstrip("/"):
        raise InvalidURL(
            f"invalid SQLite URL {url!r}; use sqlite:///relative/path.db or sqlite:////abs/path.db"
        )
    return parts.path[1:]


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch a new file to WAL (the mode is stored in the file, so once is enough).

    Two processes opening a new file at once race for the switch, and SQLite
    refuses the loser at once rather than calling its busy handler: retry a
    few times, briefly.
    """
    for pause in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0):
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_locked(exc):
                raise
            time.sleep(pause)
    conn.execute("PRAGMA journal_mode = WAL")  # a last try; its error says what is wrong


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _row_to_job(row: sqlite3.Row) -> JobRecord:
    data = {name: row[name] for name in _FIELDS}
    data["status"] = JobStatus(data["status"])
    data["cancel_requested"] = bool(data["cancel_requested"])
    if data["error"] is not None:
        data["error"] = _error_decoder.decode(data["error"])
    return JobRecord(**data)


def _encode_error(error: ErrorInfo | None) -> str | None:
    return None if error is None else _error_encoder.encode(error).decode()


class SQLiteBroker(Broker):
    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.path = os.path.abspath(sqlite_path(url))
        with _signals_lock:
            self.ready_signal, self.settled_signal = _signals.setdefault(
                self.path, (Notifier(), Notifier())
            )
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._schema_ready = False

    # -- plumbing ---------------------------------------------------------------------

    def describe(self) -> str:
        return f"SQLite file {self.path}"

    def exists(self) -> bool:
        return os.path.exists(self.path)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a statement batch on this thread's own connection.

        Statements take tens of microseconds, less than a hop to another
        thread would. Connections do not wait for locks; when another process
        holds the write lock, the batch (which changed nothing yet: the lock
        is taken first) runs again in a worker thread that waits for it.
        """
        try:
            return fn(*args)
        except sqlite3.OperationalError as exc:
            if not _is_locked(exc):
                raise
        return await asyncio.to_thread(self._patiently, fn, *args)

    def _patiently(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._db()
        conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        try:
            return fn(*args)
        finally:
            conn.execute("PRAGMA busy_timeout = 0")

    def _db(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,  # opening waits: it happens once
                check_same_thread=False,  # only so close() may run on another thread
            )
            conn.row_factory = sqlite3.Row
            _use_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            if not self._schema_ready:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version < _SCHEMA_VERSION:
                    conn.executescript(Q["schema"])
                    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                self._schema_ready = True
            conn.execute("PRAGMA busy_timeout = 0")  # see _run: waiting happens off the loop
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            raise BrokerConnectionError(
                f"cannot open SQLite database {self.path}: {exc}; check that the directory "
                "exists and is writable and that the file is a SQLite database"
            ) from exc
        return conn

    async def connect(self) -> None:
        self._db()

    async def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    async def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._write, fn)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one immediate transaction: other writers wait, none interleave."""
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            value = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT leaves it open, too
                conn.execute("ROLLBACK")
            raise
        return value

    def _poll_interval(self) -> float:
        return SQLITE_POLL_INTERVAL * 5

    # -- write side ---------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        stored = await self._transaction(lambda conn: self._insert(conn, jobs))
        self.ready_signal.notify()
        return stored

    @staticmethod
    def _insert(conn: sqlite3.Connection, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        rows = [
            {
                "id": j.id,
                "task": j.task,
                "queue": j.queue,
                "priority": j.priority,
                "payload": j.payload,
                "status": str(j.status),
                "run_at": j.run_at,
                "enqueued_at": j.enqueued_at,
                "max_attempts": j.max_attempts,
                "result_ttl": j.result_ttl,
                "timeout": j.timeout,
                "attempts": j.attempts,
                "unique_key": j.unique_key,
            }
            for j in jobs
        ]
        plain = all(j.unique_key is None for j in jobs)
        if plain and conn.executemany(Q["insert"], rows).rowcount == len(rows):
            return list(jobs)
        stored: list[JobRecord] = []
        for job, row in zip(jobs, rows, strict=True):
            if conn.execute(Q["insert"], row).rowcount == 1:
                stored.append(job)
                continue
            # Not stored: an active job holds its unique key, or its id is taken
            # (a producer sending the same batch twice); return the job that is.
            twin = None
            if job.unique_key is not None:
                twin = conn.execute(Q["find_unique"], (job.unique_key,)).fetchone()
            if twin is None:
                twin = conn.execute(Q["get"], (job.id,)).fetchone()
            stored.append(_row_to_job(twin))
        return stored

    def _claim(
        self, queues: Sequence[str], limit: int, worker: str, lease: float
    ) -> tuple[list[JobRecord], float | None, int]:
        """Claim ready jobs; if none, also say when the next waiting job is due.

        Also returns this thread's connection's data version before the look,
        for :meth:`_changed_elsewhere`.
        """
        conn = self._db()
        now = self.clock.now()
        version: int = conn.execute("PRAGMA data_version").fetchone()[0]
        if not any(conn.execute(Q["any_ready"], (q, now)).fetchone() for q in queues):
            # Only the queues served count: a job due elsewhere must not wake us.
            due = [conn.execute(Q["next_run_at"], (q,)).fetchone()[0] for q in queues]
            return [], min((t for t in due if t is not None), default=None), version

        def claim(conn: sqlite3.Connection) -> list[JobRecord]:
            claimed: list[JobRecord] = []
            for queue in queues:
                params = {"worker": worker, "now": now, "lease_until": now + lease}
                params.update(queue=queue, limit=limit - len(claimed))
                rows = conn.execute(Q["claim"], params).fetchall()
                rows.sort(key=lambda r: (-r["priority"], r["run_at"], r["seq"]))
                claimed.extend(_row_to_job(r) for r in rows)
                if len(claimed) >= limit:
                    break
            return claimed

        return self._write(claim), None, version

    def _changed_elsewhere(self, version: int) -> bool:
        """Whether another connection committed since ``version`` was read on this thread.

        Data versions are per connection, so both reads must be on the same thread.
        """
        return bool(self._db().execute("PRAGMA data_version").fetchone()[0] != version)

    async def reserve(
        self, queues: Sequence[str], limit: int, *, worker: str, lease: float, block: float = 0
    ) -> list[JobRecord]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block
        woken = False
        while True:
            generation = self.ready_signal.generation
            jobs, next_run_at, version = await self._run(self._claim, queues, limit, worker, lease)
            if jobs or woken or loop.time() >= deadline:
                return jobs
            wake_at = deadline
            if next_run_at is not None:
                wake_at = min(wake_at, loop.time() + max(next_run_at - self.clock.now(), 0.001))
            # Sleep on the in-process signal, glancing at other processes' writes.
            while loop.time() < wake_at:
                timeout = min(SQLITE_POLL_INTERVAL, wake_at - loop.time())
                if await self.ready_signal.wait(generation, timeout):
                    woken = True
                    break
                if await self._run(self._changed_elsewhere, version):
                    break

    async def claim_fire(self, schedule: str, fire_at: float, job: JobRecord | None) -> bool:
        def claim(conn: sqlite3.Connection) -> bool:
            params = {"name": schedule, "fire_at": fire_at, "job": job.id if job else None}
            if conn.execute(Q["claim_fire"], params).rowcount == 0:
                return False
            if job is not None:
                self._insert(conn, [job])
            return True

        won = await self._transaction(claim)
        if won and job is not None:
            self.ready_signal.notify()
        return won

    async def schedule_states(self) -> dict[str, ScheduleState]:
        rows = await self._run(self._fetch, Q["schedule_states"])
        return {
            name: ScheduleState(name=name, last_fire=last_fire, last_job=last_job)
            for name, last_fire, last_job in rows
        }

    async def extend(self, worker: str, job_ids: Sequence[str], lease: float) -> list[str]:
        def extend(conn: sqlite3.Connection) -> list[str]:
            until = self.clock.now() + lease
            return [
                job_id
                for job_id in job_ids
                if conn.execute(
                    Q["extend"], {"id": job_id, "worker": worker, "lease_until": until}
                ).rowcount
                == 0
            ]

        if not job_ids:
            return []
        return await self._transaction(extend)

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        def settle(conn: sqlite3.Connection) -> bool:
            now = self.clock.now()
            requeued = False
            for outcome in outcomes:
                params = {
                    "id": outcome.job_id,
                    "worker": outcome.worker,
                    "now": now,
                    "result": outcome.result,
                    "error": _encode_error(outcome.error),
                    "retry_at": outcome.retry_at if outcome.retry_at is not None else now,
                    "dead_letter_ttl": self.dead_letter_ttl,
                }
                again = outcome.kind in (OutcomeKind.RETRY, OutcomeKind.REQUEUE)
                if again and conn.execute(Q["settle_cancel_requested"], params).rowcount:
                    continue
                conn.execute(Q[f"settle_{outcome.kind}"], params)
                requeued |= again
            return requeued

        if await self._transaction(settle):
            self.ready_signal.notify()
        self.settled_signal.notify()

    async def recover(self) -> int:
        def recover(conn: sqlite3.Connection) -> int:
            now = self.clock.now()
            expired = [_row_to_job(r) for r in conn.execute(Q["expired_leases"], (now,))]
            for job in expired:
                lost = lifecycle.lose_lease(job, now=now, dead_letter_ttl=self.dead_letter_ttl)
                if lost is None or lost.status is None:
                    continue
                params = {
                    "id": job.id,
                    "now": now,
                    "error": _encode_error(lost.fields.get("error")),
                }
                params["dead_letter_ttl"] = self.dead_letter_ttl
                conn.execute(Q[_LEASE_LOST[lost.status]], params)
            conn.execute(Q["delete_expired"], (now,))
            conn.execute(Q["delete_stale_workers"], (now - WORKER_FORGOTTEN_AFTER,))
            return len(expired)

        recovered = await self._transaction(recover)
        if recovered:
            self.ready_signal.notify()
            self.settled_signal.notify()
        return recovered

    # -- read side ------------------------------------------------------------------------

    def _fetch(self, query: str, params: Any = ()) -> list[sqlite3.Row]:
        return self._db().execute(query, params).fetchall()

    async def get(self, job_id: str) -> JobRecord | None:
        rows = await self._run(self._fetch, Q["get"], (job_id,))
        return _row_to_job(rows[0]) if rows else None

    async def ids_starting_with(self, prefix: str, limit: int) -> list[str]:
        # A range, not LIKE, so the id index answers it (LIKE ignores it by default).
        rows = await self._run(self._fetch, Q["ids_from"], (prefix, prefix + "\uffff", limit))
        return [str(row["id"]) for row in rows]

    async def list_jobs(
        self, *, status: JobStatus | None = None, queue: str | None = None, limit: int = 50
    ) -> list[JobRecord]:
        where, params = ["1"], {"now": self.clock.now(), "queue": queue, "limit": limit}
        if status is not None:
            where.append(_STATUS_FILTERS.get(status, f"status = '{status}'"))
        if queue is not None:
            where.append("queue = :queue")
        if status in (JobStatus.SCHEDULED, JobStatus.RETRYING):  # in the order they fall due
            order = "run_at, priority DESC, seq"
        else:
            order = "priority DESC, run_at, seq" if status in WAITING else _NEWEST_FIRST
        query = (
            f"SELECT * FROM afterwork_jobs WHERE {' AND '.join(where)} "
            f"ORDER BY {order} LIMIT :limit"
        )
        return [_row_to_job(r) for r in await self._run(self._fetch, query, params)]

    async def stats(self) -> QueueStats:
        stats: QueueStats = {}
        for queue, status, count in await self._run(
            self._fetch, Q["stats"], {"now": self.clock.now()}
        ):
            stats.setdefault(queue, {})[status] = count
        return stats

    async def register_worker(self, info: WorkerInfo) -> None:
        data = msgspec.json.encode(info)
        await self._run(
            self._write,
            lambda conn: conn.execute(Q["upsert_worker"], (info.id, info.last_seen, data)),
        )

    async def unregister_worker(self, worker_id: str) -> None:
        await self._transaction(lambda conn: conn.execute(Q["delete_worker"], (worker_id,)))

    async def workers(self, alive_within: float) -> list[WorkerInfo]:
        rows = await self._run(self._fetch, Q["live_workers"], (self.clock.now() - alive_within,))
        return [_worker_decoder.decode(row[0]) for row in rows]

    async def _each_failed(self, query: str, job_ids: Sequence[str] | None) -> int:
        def apply(conn: sqlite3.Connection) -> int:
            ids = job_ids if job_ids is not None else [r[0] for r in conn.execute(Q["failed_ids"])]
            now = self.clock.now()
            return sum(conn.execute(query, {"id": i, "now": now}).rowcount for i in ids)

        return await self._transaction(apply)

    async def retry_failed(self, job_ids: Sequence[str] | None = None) -> int:
        count = await self._each_failed(Q["retry_failed"], job_ids)
        self.ready_signal.notify()
        return count

    async def purge(self, job_ids: Sequence[str] | None = None) -> int:
        return await self._each_failed(Q["purge_failed"], job_ids)

    async def cancel(self, job_id: str) -> bool:
        def cancel(conn: sqlite3.Connection) -> tuple[bool, bool]:
            params = {"id": job_id, "now": self.clock.now()}
            if conn.execute(Q["cancel_waiting"], params).rowcount:
                return True, True
            return bool(conn.execute(Q["cancel_running"], params).rowcount), False

        accepted, finished = await self._transaction(cancel)
        if finished:
            self.settled_signal.notify()
        return accepted
