"""Every rule of a job's lifecycle, once, with no I/O.

An operation is a function of the job as it is (and what the operation brings)
that returns the :class:`Change` to make, or ``None`` when its guard refuses:
the job is not in a state the operation applies to, or another worker holds
its lease. The memory broker applies these changes itself; SQLite and Redis
make the same changes atomically in their own language, and
``tests/brokers/test_lifecycle.py`` proves, on random sequences of operations,
that every engine ends each step with the records this module predicts.

    waiting (scheduled | queued | retrying) --claim--> running
    running --settle--> succeeded | failed | cancelled | retrying | waiting again
    running --lease lost--> queued | failed (no attempts left) | cancelled
    waiting --cancel--> cancelled          running --cancel--> (stop requested)
    failed --retry_dead_letter--> queued   failed --purge--> (deleted)
    finished --expire, once expires_at passes--> (deleted)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from .brokers.base import Outcome, OutcomeKind
from .errors import WorkerLost
from .job import ACTIVE, FINISHED, WAITING, ErrorInfo, JobRecord, JobStatus, error_type

#: How a lost lease is recorded when the job has no attempts left.
WORKER_LOST = error_type(WorkerLost)


class Change(msgspec.Struct, frozen=True):
    """What an operation does to one job.

    ``status`` None deletes the job. ``fields`` are written (None clears one).
    ``releases_unique``: the job's unique key is free for a new job.
    ``wakes``: a job became ready or due later, so waiting workers look again.
    ``expires``: the job is finished and ``fields["expires_at"]`` says when it goes.
    """

    status: JobStatus | None
    fields: Mapping[str, Any] = {}
    releases_unique: bool = False
    wakes: bool = False
    expires: bool = False


DELETE = Change(None)


def apply(job: JobRecord, change: Change) -> JobRecord | None:
    """The job after the change (a new record), or None if it is deleted."""
    if change.status is None:
        return None
    return msgspec.structs.replace(job, status=change.status, **change.fields)


def _finish(job: JobRecord, status: JobStatus, now: float, ttl: float, **fields: Any) -> Change:
    # The worker stays: it ran the last attempt.
    fields |= {"finished_at": now, "lease_until": None, "expires_at": now + ttl}
    return Change(status, fields, releases_unique=True, expires=True)


def _back_in_line(status: JobStatus, run_at: float, **fields: Any) -> Change:
    fields |= {"run_at": run_at, "worker": None, "lease_until": None}
    return Change(status, fields, wakes=True)


# -- a worker's operations --------------------------------------------------------------


def claim(job: JobRecord, *, worker: str, now: float, lease: float) -> Change | None:
    """A waiting job whose time has come becomes the worker's; the attempt counts now."""
    if job.status not in WAITING or job.run_at > now:
        return None
    fields = {
        "attempts": job.attempts + 1,
        "worker": worker,
        "started_at": now,
        "lease_until": now + lease,
    }
    return Change(JobStatus.RUNNING, fields)


def extend(job: JobRecord, *, worker: str, now: float, lease: float) -> Change | None:
    """Renew the worker's lease; None means the worker must stop running the job (its
    lease was lost, or a cancel was requested)."""
    if job.status != JobStatus.RUNNING or job.worker != worker or job.cancel_requested:
        return None
    return Change(JobStatus.RUNNING, {"lease_until": now + lease})


def settle(
    job: JobRecord, outcome: Outcome, *, now: float, dead_letter_ttl: float
) -> Change | None:
    """How an attempt ended, from the worker that holds the lease (anyone else is ignored)."""
    if job.status != JobStatus.RUNNING or job.worker != outcome.worker:
        return None
    kind, error = outcome.kind, outcome.error
    if kind == OutcomeKind.SUCCEEDED:
        return _finish(
            job, JobStatus.SUCCEEDED, now, job.result_ttl, result=outcome.result, error=None
        )
    if kind == OutcomeKind.FAILED:
        return _finish(job, JobStatus.FAILED, now, dead_letter_ttl, error=error)
    if kind == OutcomeKind.CANCELLED or job.cancel_requested:
        # A retry or put-back of a job whose cancel was requested: it never runs again.
        return _finish(job, JobStatus.CANCELLED, now, job.result_ttl, error=error or job.error)
    if kind == OutcomeKind.RETRY:
        retry_at = outcome.retry_at if outcome.retry_at is not None else now
        return _back_in_line(JobStatus.RETRYING, retry_at, error=error)
    # REQUEUE: the attempt did not happen as far as the job is concerned; a later time
    # and a reason come with a job whose task the worker does not know.
    attempts = max(job.attempts - 1, 0)
    if outcome.retry_at is not None and outcome.retry_at > now:
        return _back_in_line(
            JobStatus.SCHEDULED, outcome.retry_at, attempts=attempts, error=error or job.error
        )
    return _back_in_line(JobStatus.QUEUED, job.run_at, attempts=attempts, error=error or job.error)


def lose_lease(job: JobRecord, *, now: float, dead_letter_ttl: float) -> Change | None:
    """A running job whose lease ran out (its worker died): run it again, or dead-letter it
    if it has no attempts left, or cancel it if a cancel was requested meanwhile."""
    if job.status != JobStatus.RUNNING or job.lease_until is None or job.lease_until > now:
        return None
    if job.cancel_requested:
        return _finish(job, JobStatus.CANCELLED, now, job.result_ttl)
    if job.attempts >= job.max_attempts:
        lost = ErrorInfo(
            WORKER_LOST,
            f"the worker {job.worker} stopped renewing its lease during attempt "
            f"{job.attempts} of {job.max_attempts} (it crashed or was killed)",
        )
        return _finish(job, JobStatus.FAILED, now, dead_letter_ttl, error=lost)
    return _back_in_line(JobStatus.QUEUED, job.run_at)


# -- what handles, the CLI and the dashboard do -------------------------------------------


def cancel(job: JobRecord, *, now: float) -> Change | None:
    """A waiting job is cancelled at once; a running one is asked to stop (its worker hears
    of it at the next heartbeat). A finished job cannot be cancelled."""
    if job.status not in ACTIVE:
        return None
    if job.status == JobStatus.RUNNING:
        return Change(JobStatus.RUNNING, {"cancel_requested": True})
    return _finish(job, JobStatus.CANCELLED, now, job.result_ttl)


def retry_dead_letter(job: JobRecord, *, now: float) -> Change | None:
    """A dead letter goes back in line at once with all its attempts. The engine also
    checks that no active job holds its unique key (see :func:`holds_unique_key`)."""
    if job.status != JobStatus.FAILED:
        return None
    fields = {
        "attempts": 0,
        "cancel_requested": False,
        "finished_at": None,
        "expires_at": None,
    }
    return _back_in_line(JobStatus.QUEUED, now, **fields)


def purge(job: JobRecord) -> Change | None:
    """Only dead letters are purged."""
    return DELETE if job.status == JobStatus.FAILED else None


def expire(job: JobRecord, *, now: float) -> Change | None:
    """A finished job is deleted once its results (or its dead letter) have been kept long
    enough."""
    if job.status not in FINISHED or job.expires_at is None or job.expires_at > now:
        return None
    return DELETE


def holds_unique_key(job: JobRecord) -> bool:
    """Whether the job keeps others with its unique key from being enqueued (or retried)."""
    return job.unique_key is not None and job.status in ACTIVE


def ready_order(job: JobRecord, enqueue_order: int) -> tuple[float, float, int]:
    """Within a queue, claims take the highest priority, then the job due longest, then the
    one enqueued first (a job put back keeps its place)."""
    return (-job.priority, job.run_at, enqueue_order)
