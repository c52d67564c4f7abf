"""Job records built by hand, for engine-specific tests that bypass the conformance fixtures."""

from __future__ import annotations

from typing import Any

from afterwork.clock import Clock
from afterwork.job import JobRecord, JobStatus


def job(job_id: str, clock: Clock, *, queue: str = "default", **fields: Any) -> JobRecord:
    """A job ready now; ``fields`` set or override any other field."""
    now = clock.now()
    defaults: dict[str, Any] = {
        "task": "tests.noop",
        "priority": 0,
        "payload": b"{}",
        "status": JobStatus.QUEUED,
        "run_at": now,
        "enqueued_at": now,
        "max_attempts": 3,
        "result_ttl": 60.0,
    }
    return JobRecord(id=job_id, queue=queue, **(defaults | fields))
