"""``memory://``: jobs in this process's memory, for tests and the in-process rung.

State is guarded by one lock so producers on any thread or loop can share it
with a worker; waiting jobs sit in per-queue heaps with lazy deletion, so
claiming is O(log n) however many jobs wait.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import itertools
import threading
from collections.abc import Sequence

import msgspec

from .. import lifecycle
from ..defaults import WORKER_FORGOTTEN_AFTER
from ..job import WAITING, JobRecord, JobStatus
from .base import (
    Broker,
    Outcome,
    QueueStats,
    ScheduleState,
    WorkerInfo,
)

# (-priority, run_at, enqueue order, entry token, id): the heap pops the job that
# should run first. A job put back keeps its enqueue order, so its place in line.
_ReadyEntry = tuple[int, float, int, int, str]


class MemoryBroker(Broker):
    durable = False

    def __init__(self, url: str, **options: object) -> None:
        super().__init__(url, **options)  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRecord] = {}
        self._entry: dict[str, int] = {}  # job id -> token of its one valid heap entry
        self._order: dict[str, int] = {}  # job id -> its enqueue order
        self._ready: dict[str, list[_ReadyEntry]] = {}
        self._delayed: list[tuple[float, int, str]] = []
        self._unique: dict[str, str] = {}
        self._running: set[str] = set()
        self._expiry: list[tuple[float, str]] = []
        self._workers: dict[str, WorkerInfo] = {}
        self._schedules: dict[str, ScheduleState] = {}
        self._seq = itertools.count()
        self._tokens = itertools.count()

    def describe(self) -> str:
        return "memory:// (jobs live in this process only)"

    # -- internal, called with the lock held ------------------------------------------

    def _push(self, job: JobRecord, now: float) -> None:
        token = next(self._tokens)
        self._entry[job.id] = token
        if job.run_at > now:
            heapq.heappush(self._delayed, (job.run_at, token, job.id))
        else:
            self._push_ready(job, token)

    def _push_ready(self, job: JobRecord, token: int) -> None:
        heap = self._ready.setdefault(job.queue, [])
        heapq.heappush(heap, (-job.priority, job.run_at, self._order[job.id], token, job.id))

    def _promote_due(self, now: float) -> None:
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, token, job_id = heapq.heappop(delayed)
            job = self._jobs.get(job_id)
            if job is not None and self._entry.get(job_id) == token:
                self._push_ready(job, token)

    def _delete(self, job_id: str) -> None:
        del self._jobs[job_id]
        self._order.pop(job_id, None)

    def _change(self, job: JobRecord, change: lifecycle.Change | None, now: float) -> bool:
        """Make a lifecycle change, and keep the heaps and indexes in step with it."""
        if change is None:
            return False
        after = lifecycle.apply(job, change)
        if after is None:
            self._delete(job.id)
            return True
        self._jobs[job.id] = after
        if after.status == JobStatus.RUNNING:
            self._running.add(job.id)
        else:
            self._running.discard(job.id)
        unique = job.unique_key
        if change.releases_unique and unique is not None and self._unique.get(unique) == job.id:
            del self._unique[unique]
        if change.expires:
            self._entry.pop(job.id, None)
            heapq.heappush(self._expiry, (after.expires_at or now, job.id))
        if change.wakes:
            self._push(after, now)
        return True

    # -- write side ---------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        stored: list[JobRecord] = []
        with self._lock:
            now = self.clock.now()
            for given in jobs:
                if given.id in self._jobs:  # sent twice: the job stored first stands
                    stored.append(self._copy(self._jobs[given.id]))
                    continue
                if given.unique_key is not None:
                    twin = self._unique.get(given.unique_key)
                    if twin is not None:
                        stored.append(self._copy(self._jobs[twin]))
                        continue
                    self._unique[given.unique_key] = given.id
                job = self._copy(given)  # the caller keeps its record; we keep ours
                self._jobs[job.id] = job
                self._order[job.id] = next(self._seq)
                self._push(job, now)
                stored.append(self._copy(job))
        self.ready_signal.notify()
        return stored

    def _claim(
        self, queues: Sequence[str], limit: int, worker: str, lease: float
    ) -> list[JobRecord]:
        claimed: list[JobRecord] = []
        with self._lock:
            now = self.clock.now()
            self._promote_due(now)
            for queue in queues:
                heap = self._ready.get(queue)
                while heap and len(claimed) < limit:
                    _, _, _, token, job_id = heapq.heappop(heap)
                    if self._entry.get(job_id) != token:
                        continue
                    del self._entry[job_id]
                    job = self._jobs[job_id]
                    self._change(
                        job, lifecycle.claim(job, worker=worker, now=now, lease=lease), now
                    )
                    claimed.append(self._jobs[job_id])
                if len(claimed) >= limit:
                    break
            return [self._copy(job) for job in claimed]

    def _next_run_at(self) -> float | None:
        with self._lock:
            return self._delayed[0][0] if self._delayed else None

    async def reserve(
        self, queues: Sequence[str], limit: int, *, worker: str, lease: float, block: float = 0
    ) -> list[JobRecord]:
        return await self._reserve_blocking(queues, limit, worker, lease, block)

    async def _reserve_blocking(
        self, queues: Sequence[str], limit: int, worker: str, lease: float, block: float
    ) -> list[JobRecord]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block
        woken = False
        while True:
            generation = self.ready_signal.generation
            jobs = self._claim(queues, limit, worker, lease)
            remaining = deadline - loop.time()
            if jobs or woken or remaining <= 0:
                return jobs
            next_run = self._next_run_at()
            if next_run is not None:
                remaining = min(remaining, max(next_run - self.clock.now(), 0.001))
            woken = await self.ready_signal.wait(generation, remaining)

    async def claim_fire(self, schedule: str, fire_at: float, job: JobRecord | None) -> bool:
        with self._lock:
            state = self._schedules.get(schedule)
            if state is not None and state.last_fire >= fire_at:
                return False
            last_job = job.id if job is not None else (state.last_job if state else None)
            self._schedules[schedule] = ScheduleState(
                name=schedule, last_fire=fire_at, last_job=last_job
            )
        if job is not None:
            await self.enqueue([job])
        return True

    async def schedule_states(self) -> dict[str, ScheduleState]:
        with self._lock:
            return {name: copy.copy(state) for name, state in self._schedules.items()}

    async def extend(self, worker: str, job_ids: Sequence[str], lease: float) -> list[str]:
        lost: list[str] = []
        with self._lock:
            now = self.clock.now()
            for job_id in job_ids:
                job = self._jobs.get(job_id)
                renewed = job is not None and self._change(
                    job, lifecycle.extend(job, worker=worker, now=now, lease=lease), now
                )
                if not renewed:
                    lost.append(job_id)
        return lost

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        woken = False
        with self._lock:
            now = self.clock.now()
            for outcome in outcomes:
                job = self._jobs.get(outcome.job_id)
                if job is None:
                    continue
                change = lifecycle.settle(
                    job, outcome, now=now, dead_letter_ttl=self.dead_letter_ttl
                )
                self._change(job, change, now)
                woken |= bool(change and change.wakes)
        self.settled_signal.notify()
        if woken:
            self.ready_signal.notify()

    async def recover(self) -> int:
        recovered = 0
        with self._lock:
            now = self.clock.now()
            cutoff = now - WORKER_FORGOTTEN_AFTER
            self._workers = {k: w for k, w in self._workers.items() if w.last_seen >= cutoff}
            for job_id in list(self._running):
                job = self._jobs[job_id]
                lost = lifecycle.lose_lease(job, now=now, dead_letter_ttl=self.dead_letter_ttl)
                recovered += self._change(job, lost, now)
            while self._expiry and self._expiry[0][0] <= now:
                _, job_id = heapq.heappop(self._expiry)
                if (expired := self._jobs.get(job_id)) is not None:
                    self._change(expired, lifecycle.expire(expired, now=now), now)
        if recovered:
            self.ready_signal.notify()
            self.settled_signal.notify()
        return recovered

    # -- read side ------------------------------------------------------------------------

    @staticmethod
    def _copy(job: JobRecord) -> JobRecord:
        # Callers get snapshots, so nothing outside the lock mutates stored state.
        return msgspec.structs.replace(job)

    async def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else self._copy(job)

    async def ids_starting_with(self, prefix: str, limit: int) -> list[str]:
        with self._lock:
            return [i for i in self._jobs if i.startswith(prefix)][:limit]

    async def list_jobs(
        self, *, status: JobStatus | None = None, queue: str | None = None, limit: int = 50
    ) -> list[JobRecord]:
        with self._lock:
            now = self.clock.now()
            jobs = [
                self._copy(j)
                for j in self._jobs.values()
                if (queue is None or j.queue == queue)
                and (status is None or j.status_at(now) == status)
            ]
        if status in (JobStatus.SCHEDULED, JobStatus.RETRYING):  # in the order they fall due
            jobs.sort(key=lambda j: (j.run_at, -j.priority, j.enqueued_at))
        elif status in WAITING:
            jobs.sort(key=lambda j: (-j.priority, j.run_at, j.enqueued_at))
        else:  # newest first, and of jobs that changed at the same time the last enqueued
            jobs.reverse()
            jobs.sort(key=lambda j: j.finished_at or j.started_at or j.enqueued_at, reverse=True)
        return jobs[:limit]

    async def stats(self) -> QueueStats:
        stats: QueueStats = {}
        with self._lock:
            now = self.clock.now()
            for job in self._jobs.values():
                counts = stats.setdefault(job.queue, {})
                key = str(job.status_at(now))
                counts[key] = counts.get(key, 0) + 1
        return stats

    async def register_worker(self, info: WorkerInfo) -> None:
        with self._lock:
            self._workers[info.id] = copy.copy(info)

    async def unregister_worker(self, worker_id: str) -> None:
        with self._lock:
            self._workers.pop(worker_id, None)

    async def workers(self, alive_within: float) -> list[WorkerInfo]:
        with self._lock:
            cutoff = self.clock.now() - alive_within
            return [copy.copy(w) for w in self._workers.values() if w.last_seen >= cutoff]

    def _failed_ids(self, job_ids: Sequence[str] | None) -> list[str]:
        ids = self._jobs.keys() if job_ids is None else dict.fromkeys(job_ids)
        return [i for i in ids if (j := self._jobs.get(i)) and j.status == JobStatus.FAILED]

    async def retry_failed(self, job_ids: Sequence[str] | None = None) -> int:
        with self._lock:
            now = self.clock.now()
            retried = 0
            for job_id in self._failed_ids(job_ids):
                job = self._jobs[job_id]
                if job.unique_key is not None:
                    if job.unique_key in self._unique:
                        continue  # an active twin already does this job's work
                    self._unique[job.unique_key] = job.id
                retried += self._change(job, lifecycle.retry_dead_letter(job, now=now), now)
        self.ready_signal.notify()
        return retried

    async def purge(self, job_ids: Sequence[str] | None = None) -> int:
        with self._lock:
            now = self.clock.now()
            jobs = [self._jobs[i] for i in self._failed_ids(job_ids)]
            return sum(self._change(job, lifecycle.purge(job), now) for job in jobs)

    async def cancel(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            now = self.clock.now()
            if job is None or not self._change(job, lifecycle.cancel(job, now=now), now):
                return False
        self.settled_signal.notify()
        return True
