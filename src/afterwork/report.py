"""What ``afterwork status`` shows: gathered from the broker's read side, rendered as text or JSON.

Kept apart from the command line so the dashboard can serve the same data.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import msgspec

from .brokers import Broker
from .defaults import WORKER_STALE_AFTER
from .errors import UnknownTask
from .job import JobRecord, JobStatus, describe, error_type
from .scheduler import describe as describe_periodic
from .serialization import Serializer

if TYPE_CHECKING:
    from .app import Afterwork

#: How an :class:`UnknownTask` error is recorded in a job.
UNKNOWN_TASK = error_type(UnknownTask)

STATUS_COLUMNS = [
    JobStatus.SCHEDULED,
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.RETRYING,
    JobStatus.FAILED,
    JobStatus.SUCCEEDED,
    JobStatus.CANCELLED,
]


async def gather_status(
    broker: Broker, next_limit: int = 10, app: Afterwork | None = None
) -> dict[str, Any]:
    """Queues with counts, the next jobs in run order, live workers, and the app's
    periodic tasks when ``app`` is given.

    The next jobs are the ready ones first, in the order workers claim them, then
    those waiting for a later time (scheduled, or retrying after a delay) by due time.
    """
    stats = await broker.stats()
    now = broker.clock.now()
    upcoming = await broker.list_jobs(status=JobStatus.QUEUED, limit=next_limit)
    room = next_limit - len(upcoming)
    if room > 0:
        later: list[JobRecord] = []
        for status in (JobStatus.SCHEDULED, JobStatus.RETRYING):
            later += await broker.list_jobs(status=status, limit=room)
        upcoming += by_due_time(later)[:room]
    workers = await broker.workers(WORKER_STALE_AFTER)
    served = {queue for worker in workers for queue in worker.queues}
    homeless = await jobs_of_unknown_tasks(broker)
    report: dict[str, Any] = {
        "broker": broker.describe(),
        "queues": {
            queue: {str(s): counts.get(str(s), 0) for s in STATUS_COLUMNS}
            for queue, counts in sorted(stats.items())
        },
        "next": [describe(job, now) for job in upcoming],
        "workers": [msgspec.to_builtins(w) for w in workers],
        # Ready jobs that no live worker will claim: a worker started without --queues
        # for them, or none running at all.
        "unserved": {
            queue: counts.get(str(JobStatus.QUEUED), 0)
            for queue, counts in sorted(stats.items())
            if counts.get(str(JobStatus.QUEUED), 0) and queue not in served
        },
        # Jobs a worker put back because it did not know their task, by task name.
        "unknown_tasks": {name: len(jobs) for name, jobs in sorted(homeless.items())},
    }
    if app is not None and app.schedules:
        report["periodic"] = await gather_periodic(app, broker)
    return report


#: How many waiting jobs ``status`` reads, per status, to find those of unknown tasks.
UNKNOWN_TASK_SCAN = 500


async def jobs_of_unknown_tasks(broker: Broker) -> dict[str, list[JobRecord]]:
    """Waiting jobs that a worker put back because it did not know their task (during
    a rolling deploy, or when a worker serves the wrong app), by task name."""
    found: dict[str, list[JobRecord]] = {}
    for status in (JobStatus.SCHEDULED, JobStatus.QUEUED):
        for job in await broker.list_jobs(status=status, limit=UNKNOWN_TASK_SCAN):
            # Only a put-back carries ``since``; a retried dead letter keeps its old error.
            if job.error is not None and job.error.type == UNKNOWN_TASK and job.error.since:
                found.setdefault(job.task, []).append(job)
    return found


async def gather_periodic(app: Afterwork, broker: Broker | None) -> list[dict[str, Any]]:
    """Each periodic task: its schedule, next fire, last fire and how that run went.

    Without a broker (its store does not exist yet) nothing has fired: the
    schedules and their next fires are still worth showing.
    """
    states = await broker.schedule_states() if broker is not None else {}
    now = app.clock.now()
    rows = []
    for periodic in app.schedules.values():
        state = states.get(periodic.name)
        last = None
        if broker is not None and state is not None and state.last_job is not None:
            last = await broker.get(state.last_job)
        rows.append(
            {
                "task": periodic.name,
                "schedule": describe_periodic(periodic),
                "next_fire": periodic.schedule.next_after(now),
                "tz": getattr(getattr(periodic.schedule, "tz", None), "key", None),
                "last_fire": state.last_fire if state else None,
                "last_job": state.last_job if state else None,
                "last_status": str(last.status_at(now)) if last else None,
                "last_error": last.error.type if last and last.error else None,
            }
        )
    return rows


def render_periodic(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "  no periodic tasks"
    return table(
        ["task", "schedule", "next fire", "last fire", "last run", "error"],
        [
            [
                r["task"],
                r["schedule"],
                when(r["next_fire"], r["tz"]),
                when(r["last_fire"]),
                r["last_status"] or "-",
                r["last_error"] or "",
            ]
            for r in rows
        ],
    )


async def left_for_later(broker: Broker, queues: list[str]) -> str | None:
    """What a burst worker leaves behind: jobs in ``queues`` that wait for a later
    time (scheduled, or waiting out a retry delay), and when the first is due."""
    stats = await broker.stats()
    waiting = {
        status: sum(stats.get(queue, {}).get(str(status), 0) for queue in queues)
        for status in (JobStatus.SCHEDULED, JobStatus.RETRYING)
    }
    total = sum(waiting.values())
    if not total:
        return None
    due: list[float] = []
    for status, count in waiting.items():
        for queue in queues if count else ():
            due += [j.run_at for j in await broker.list_jobs(status=status, queue=queue, limit=1)]
    return (
        f"{total} job{'s' if total != 1 else ''} left for a later run "
        f"({waiting[JobStatus.SCHEDULED]} scheduled, {waiting[JobStatus.RETRYING]} retrying); "
        f"the first is due at {when(min(due, default=None))}"
    )


def by_due_time(jobs: list[JobRecord]) -> list[JobRecord]:
    """Jobs waiting for a later time, in the order they fall due."""
    return sorted(jobs, key=lambda j: (j.run_at, -j.priority, j.id))


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain left-aligned text table; numbers are right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(r[i], int) for r in rows) and bool(rows) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(width) if num else cell.ljust(width)
            for cell, width, num in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def when(timestamp: float | None, zone: str | None = None) -> str:
    """A time with its zone's name: this machine's zone, or ``zone`` (a cron
    schedule's own) when given."""
    if timestamp is None:
        return "-"
    moment = dt.datetime.fromtimestamp(timestamp, ZoneInfo(zone) if zone else None)
    return moment.astimezone(moment.tzinfo or None).strftime("%Y-%m-%d %H:%M:%S %Z")


def render_status(status: dict[str, Any]) -> str:
    queues = status["queues"]
    out = [f"Jobs in {status['broker']}", "", "Queues"]
    if queues:
        headers = ["queue"] + [
            "dead letters" if s == JobStatus.FAILED else str(s) for s in STATUS_COLUMNS
        ]
        rows = [[q] + [counts[str(s)] for s in STATUS_COLUMNS] for q, counts in queues.items()]
        out.append(table(headers, rows))
    else:
        out.append("  no jobs")
    out += ["", "Next to run"]
    if status["next"]:
        rows = [
            [j["id"], j["task"], j["queue"], j["status"], j["priority"], when(j["run_at"])]
            for j in status["next"]
        ]
        out.append(table(["id", "task", "queue", "status", "priority", "due"], rows))
    else:
        out.append("  nothing is waiting")
    out += ["", "Workers"]
    if status["workers"]:
        rows = [
            [
                w["id"],
                ",".join(w["queues"]),
                w["concurrency"],
                w["running"],
                w["processed"],
                w["failed"],
                when(w["last_seen"]),
            ]
            for w in status["workers"]
        ]
        out.append(
            table(["worker", "queues", "concurrency", "running", "done", "failed", "seen"], rows)
        )
    else:
        out.append("  no live workers")
    if "periodic" in status:
        out += ["", "Periodic", render_periodic(status["periodic"])]
    attention = [
        f"  {plural(count, 'job')} ready in queue {queue!r}, and no live worker serves it: "
        f"start one with --queues {queue}"
        for queue, count in status["unserved"].items()
    ] + [
        f"  {count}{'+' if count >= UNKNOWN_TASK_SCAN else ''} job{'' if count == 1 else 's'} "
        f"of task {name!r} put back by a worker that does not know the task: they wait for "
        "one that does, then go to the dead-letter queue"
        for name, count in status["unknown_tasks"].items()
    ]
    if attention:
        out += ["", "Needs attention", *attention]
    return "\n".join(out)


def plural(count: int, noun: str) -> str:
    """``1 job``, ``2 jobs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def render_jobs(jobs: list[JobRecord], now: float) -> str:
    if not jobs:
        return "no jobs"
    rows = [
        [
            j.id,
            j.task,
            j.queue,
            str(j.status_at(now)),
            f"{j.attempts}/{j.max_attempts}",
            when(j.finished_at or j.started_at or j.run_at),
            j.error.type if j.error else "",
        ]
        for j in jobs
    ]
    return table(["id", "task", "queue", "status", "attempts", "when", "error"], rows)


def job_result(job: JobRecord, serializer: Serializer) -> Any:
    """A succeeded job's return value, decoded; ``None`` for other jobs."""
    if job.status != JobStatus.SUCCEEDED or job.result is None:
        return None
    try:
        return serializer.loads(job.result)
    except Exception as exc:
        return f"<cannot decode the result as {serializer.name}: {exc}>"


def _as_json(value: Any) -> str:
    """``value`` as JSON text, or its repr when JSON cannot show it (a pickled object, say)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def job_json(job: JobRecord, now: float, serializer: Serializer) -> dict[str, Any]:
    """What ``afterwork job --json`` prints: :func:`describe` (the traceback is under
    ``error``) and the decoded ``result``."""
    data = describe(job, now)
    result = job_result(job, serializer)
    try:
        json.dumps(result)
    except (TypeError, ValueError):
        result = repr(result)
    data["result"] = result
    return data


def render_job(job: JobRecord, now: float, serializer: Serializer) -> str:
    data = describe(job, now)
    lines = [
        f"{key:13} {when(value) if key.endswith('_at') else '-' if value is None else value}"
        for key, value in data.items()
        if key != "error"
    ]
    if job.status == JobStatus.SUCCEEDED:
        lines.append(f"{'result':13} {_as_json(job_result(job, serializer))}")
    if job.error:
        lines += ["", f"error         {job.error.type}: {job.error.message}"]
        if job.error.traceback:
            lines += ["", job.error.traceback.rstrip()]
    return "\n".join(lines)
