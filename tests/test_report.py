"""What ``afterwork status`` and a burst worker report, on every embedded broker."""

from __future__ import annotations

import datetime as dt

from afterwork import Afterwork, JobStatus, ManualClock, Retry
from afterwork.brokers import WorkerInfo
from afterwork.report import (
    gather_periodic,
    gather_status,
    left_for_later,
    render_periodic,
    render_status,
    when,
)


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
        f"the first is due at {due:%Y-%m-%d %H:%M:%S} {due.astimezone():%Z}"
    )
    clock.advance(3600)
    assert await left_for_later(broker, ["default"]) is None


async def test_status_first_says_where_the_jobs_are(manual_app: Afterwork) -> None:
    status = await gather_status(await manual_app.aconnect())

    first = render_status(status).splitlines()[0]
    assert first == f"Jobs in {manual_app.broker.describe()}"
    if manual_app.url.startswith("sqlite"):
        assert first.startswith("Jobs in SQLite file /")  # absolute, whatever the directory


async def test_status_flags_ready_jobs_in_queues_no_live_worker_serves(
    manual_app: Afterwork, clock: ManualClock
) -> None:
    task = manual_app.task(send)
    await task.aenqueue("a")
    await task.using(queue="reports").aenqueue("b")
    await task.using(queue="reports").aenqueue("c")
    await task.using(queue="later", delay="1h").aenqueue("d")
    broker = await manual_app.aconnect()
    now = clock.now()
    await broker.register_worker(
        WorkerInfo(
            id="w",
            hostname="h",
            pid=1,
            queues=["default"],
            concurrency=1,
            started_at=now,
            last_seen=now,
        )
    )

    status = await gather_status(broker)

    assert status["unserved"] == {"reports": 2}
    assert render_status(status).splitlines()[-2:] == [
        "Needs attention",
        "  2 jobs ready in queue 'reports', and no live worker serves it: "
        "start one with --queues reports",
    ]


def test_times_name_their_zone() -> None:
    moment = dt.datetime(2025, 7, 1, 12, 0, tzinfo=dt.UTC).timestamp()

    assert when(moment, "Europe/Paris") == "2025-07-01 14:00:00 CEST"
    assert when(moment, "UTC") == "2025-07-01 12:00:00 UTC"
    local = dt.datetime.fromtimestamp(moment).astimezone()
    assert when(moment) == f"{local:%Y-%m-%d %H:%M:%S %Z}"


def nightly() -> None:
    pass


async def test_a_cron_schedules_next_fire_is_shown_in_its_own_zone(
    manual_app: Afterwork, clock: ManualClock
) -> None:
    manual_app.periodic(cron="0 2 * * *", tz="Europe/Paris")(nightly)

    rows = await gather_periodic(manual_app, await manual_app.aconnect())

    [row] = render_periodic(rows).splitlines()[1:]
    assert " 02:00:00 CE" in row  # CET or CEST, by the date


def charge(order: str) -> str:
    return order


def refund(order: str) -> str:
    return order


async def test_status_lists_jobs_put_back_for_a_worker_that_knows_their_task(
    manual_app: Afterwork, clock: ManualClock
) -> None:
    # Enqueued by code that knows the tasks; run by a worker that does not.
    for name, func in (("billing.charge", charge), ("billing.refund", refund)):
        await manual_app.task(name=name)(func).aenqueue("order-1")
        del manual_app.tasks[name]
    broker = await manual_app.aconnect()
    await manual_app.worker(burst=True, unknown_task_wait=60).run()

    status = await gather_status(broker)

    assert status["unknown_tasks"] == {"billing.charge": 1, "billing.refund": 1}
    assert render_status(status).splitlines()[-1] == (
        "  1 job of task 'billing.refund' put back by a worker that does not know the task: "
        "they wait for one that does, then go to the dead-letter queue"
    )
    # Dead-lettered, then retried from the dead-letter queue: no longer a put-back.
    clock.advance(60)
    await manual_app.worker(burst=True, unknown_task_wait=0).run()
    [refunded] = await broker.list_jobs(status=JobStatus.FAILED, limit=1)
    await broker.retry_failed([refunded.id])
    assert (await gather_status(broker))["unknown_tasks"] == {}
