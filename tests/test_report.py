"""What ``afterwork status`` and a burst worker report, on every embedded broker."""

from __future__ import annotations

import datetime as dt

from afterwork import Afterwork, JobStatus, ManualClock, Retry
from afterwork.report import gather_status, left_for_later


def send(path: str) -> str:
    return path


def ask_again(delay: float) -> None:
    raise Retry("not yet", delay=delay)


async def test_next_to_run_lists_ready_jobs_then_waiting_ones_by_due_time(
    manual_app: Afterwork,
) -> None:
    task, again = manual_app.task(send), manual_app.task(retries=1)(ask_again)
    retrying = await again.aenqueue(1800)
    await manual_app.worker(burst=True).run()
    latest = await task.using(delay="3h", priority=50).aenqueue("latest")
    later = await task.using(delay="1h").aenqueue("later")
    low = await task.using(priority=-1).aenqueue("low")
    ready = await task.aenqueue("ready")

    status = await gather_status(await manual_app.aconnect())

    assert [(j["id"], j["status"]) for j in status["next"]] == [
        (ready.id, "queued"),
        (low.id, "queued"),
        (retrying.id, "retrying"),
        (later.id, "scheduled"),
        (latest.id, "scheduled"),
    ]
    few = await gather_status(await manual_app.aconnect(), next_limit=3)
    assert [j["id"] for j in few["next"]] == [ready.id, low.id, retrying.id]


async def test_scheduled_jobs_are_listed_as_they_fall_due_whatever_their_priority(
    manual_app: Afterwork,
) -> None:
    task = manual_app.task(send)
    delays = {"3h": 50, "1h": 0, "2h": -10, "30m": 10}
    handles = [await task.using(delay=d, priority=p).aenqueue(d) for d, p in delays.items()]
    broker = await manual_app.aconnect()

    listed = await broker.list_jobs(status=JobStatus.SCHEDULED, limit=2)

    assert [j.id for j in listed] == [handles[3].id, handles[1].id]


async def test_left_for_later_counts_what_a_burst_worker_does_not_wait_for(
    manual_app: Afterwork, clock: ManualClock
) -> None:
    task, again = manual_app.task(send), manual_app.task(retries=1)(ask_again)
    broker = await manual_app.aconnect()
    assert await left_for_later(broker, ["default"]) is None
    await again.aenqueue(600)
    await manual_app.worker(burst=True).run()
    await task.using(delay="1h").aenqueue("later")
    await task.using(delay="1m", queue="other").aenqueue("elsewhere")

    message = await left_for_later(broker, ["default"])

    due = dt.datetime.fromtimestamp(clock.now() + 600)
    assert message == (
        "2 jobs left for a later run (1 scheduled, 1 retrying); "
        f"the first is due at {due:%Y-%m-%d %H:%M:%S}"
    )
    clock.advance(3600)
    assert await left_for_later(broker, ["default"]) is None
