"""Periodic tasks: validation at decoration, one job per fire, misfires, restarts, DST, overlap.

Time is a ManualClock: schedulers are driven tick by tick, never by sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from services import require_service

from afterwork import Afterwork, JobStatus, ManualClock, TaskConfigurationError
from afterwork.brokers import Broker
from afterwork.scheduler import Scheduler

PARIS = ZoneInfo("Europe/Paris")
# 2026-01-15 08:00:00 UTC, a Thursday
START = datetime(2026, 1, 15, 8, 0, tzinfo=ZoneInfo("UTC")).timestamp()


def noop() -> None:
    return None


async def anoop() -> None:
    return None


def needs(value: int) -> None: ...


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test on every engine with periodic support; Redis with a key prefix of its own."""
    if request.param == "memory":
        yield "memory://"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/jobs.db"
    else:
        redis_url = f"redis://127.0.0.1:6379/15?prefix=s{uuid.uuid4().hex[:10]}"
        require_service("Redis", redis_url)
        yield redis_url
        cleaner = Afterwork(redis_url)
        await cleaner.broker.delete_all()  # type: ignore[attr-defined]
        await cleaner.aclose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def make_app(url: str, clock: ManualClock) -> Callable[[], Afterwork]:
    """Apps on one broker, as separate processes would have (SQLite: one file).

    ``memory://`` lives in one app, so there every call returns that app: its
    schedulers still race, within one process.
    """
    shared: list[Afterwork] = []

    def make() -> Afterwork:
        if url.startswith("memory"):
            if not shared:
                shared.append(Afterwork(url, clock=clock))
            return shared[0]
        return Afterwork(url, clock=clock)

    return make


@pytest.fixture
async def app(make_app: Callable[[], Afterwork]) -> AsyncIterator[Afterwork]:
    jobs = make_app()
    yield jobs
    await jobs.aclose()


async def started(app: Afterwork) -> tuple[Scheduler, Broker]:
    broker = await app.aconnect()
    scheduler = Scheduler(app)
    await scheduler.prepare(broker)
    return scheduler, broker


async def run_for(
    clock: ManualClock, step: float, steps: int, schedulers: list[tuple[Scheduler, Broker]]
) -> list[str]:
    fired: list[str] = []
    for _ in range(steps):
        clock.advance(step)
        for scheduler, broker in schedulers:
            fired += await scheduler.tick(broker)
    return fired


async def fire_times(broker: Broker) -> list[float]:
    jobs = await broker.list_jobs(limit=10_000)
    return sorted(j.enqueued_at for j in jobs)


# -- definition-time validation ----------------------------------------------------------


def test_a_periodic_task_needs_exactly_one_of_every_and_cron() -> None:
    jobs = Afterwork("memory://")
    with pytest.raises(TaskConfigurationError, match="exactly one of every"):
        jobs.periodic()(noop)
    with pytest.raises(TaskConfigurationError, match="exactly one of every"):
        jobs.periodic(every="1h", cron="0 * * * *")(noop)


@pytest.mark.parametrize("every", ["30x", "soon", "1h30", "-5m"])
def test_a_bad_interval_names_the_input(every: str) -> None:
    with pytest.raises(ValueError, match=repr(every).replace("-", "\\-")):
        Afterwork("memory://").periodic(every=every)(noop)


@pytest.mark.parametrize("every", [0, "0s", timedelta(0)])
def test_a_zero_interval_is_refused(every: Any) -> None:
    with pytest.raises(ValueError, match="more than 0 seconds"):
        Afterwork("memory://").periodic(every=every)(noop)


@pytest.mark.parametrize("cron", ["61 * * * *", "* * *", "every day", "0 0 30 2 *", "0 0 31 4 *"])
def test_a_cron_that_is_invalid_or_never_fires_fails_at_decoration(cron: str) -> None:
    with pytest.raises(TaskConfigurationError, match="five fields"):
        Afterwork("memory://").periodic(cron=cron)(noop)


def test_an_unknown_time_zone_fails_at_decoration() -> None:
    with pytest.raises(TaskConfigurationError, match="unknown time zone 'Europe/Pariss'"):
        Afterwork("memory://").periodic(cron="0 2 * * *", tz="Europe/Pariss")(noop)


@pytest.mark.parametrize("tz", ["+02:00", "UTC+2", "-0500", "GMT+1"])
def test_a_time_zone_given_as_an_offset_is_refused_with_the_reason(tz: str) -> None:
    with pytest.raises(TaskConfigurationError, match="fixed offset"):
        Afterwork("memory://").periodic(cron="0 2 * * *", tz=tz)(noop)


def test_a_periodic_task_that_requires_arguments_is_refused() -> None:
    with pytest.raises(TaskConfigurationError, match="requires value"):
        Afterwork("memory://").periodic(every="1h")(needs)  # type: ignore[arg-type]


def test_a_periodic_task_takes_the_task_options_and_refuses_unknown_ones() -> None:
    jobs = Afterwork("memory://")
    task = jobs.periodic(every="1h", queue="reports", priority=5, retries=1, timeout=10)(noop)
    assert (task.queue, task.priority, task.retry.max_attempts, task.timeout) == (
        "reports",
        5,
        2,
        10,
    )
    assert jobs.schedules[task.name].schedule.describe() == "every 1h"
    with pytest.raises(TaskConfigurationError, match="did you mean 'retries'"):
        jobs.periodic(every="1h", retires=3)(anoop)  # type: ignore[call-arg]


# -- one job per fire --------------------------------------------------------------------


async def test_the_first_run_waits_for_the_first_trigger(app: Afterwork, clock: ManualClock):
    app.periodic(every="30m", name="report")(noop)
    scheduler, broker = await started(app)
    assert scheduler.next_fires() == {"report": START + 1800}
    assert await scheduler.tick(broker) == []
    clock.advance(1799)
    assert await scheduler.tick(broker) == []
    clock.advance(1)
    assert await scheduler.tick(broker) == ["report"]


async def test_an_interval_fires_once_per_period_in_elapsed_time(
    app: Afterwork, clock: ManualClock
) -> None:
    app.periodic(every="30m", name="report", overlap=True)(noop)
    scheduler = await started(app)
    fired = await run_for(clock, 600, 6 * 24, [scheduler])  # a day in 10-minute steps
    assert fired.count("report") == 48


async def test_three_schedulers_racing_produce_one_job_per_fire(
    make_app: Callable[[], Afterwork], clock: ManualClock
) -> None:
    apps = [make_app() for _ in range(3)]
    for jobs in apps:
        jobs.periodic(every="5m", name="sync", overlap=True)(anoop)
        jobs.periodic(cron="0 * * * *", name="hourly", overlap=True)(noop)
    schedulers = [await started(jobs) for jobs in apps]
    fired = await run_for(clock, 60, 180, schedulers)  # three hours, each minute
    assert fired.count("sync") == 36
    assert fired.count("hourly") == 3
    stats = await schedulers[0][1].stats()
    assert stats["default"]["queued"] == 39
    for jobs in apps:
        await jobs.aclose()


async def test_each_fire_is_an_ordinary_job_with_the_task_options(
    app: Afterwork, clock: ManualClock
) -> None:
    task = app.periodic(every="1h", name="backup", queue="maintenance", priority=7, retries=4)(noop)
    scheduler, broker = await started(app)
    clock.advance(3600)
    await scheduler.tick(broker)
    [job] = await broker.list_jobs()
    assert (job.task, job.queue, job.priority, job.max_attempts) == (task.name, "maintenance", 7, 5)


# -- restarts and misfires -----------------------------------------------------------------


async def test_a_restart_never_replays_a_fire_that_already_ran(
    make_app: Callable[[], Afterwork], clock: ManualClock
) -> None:
    first = make_app()
    first.periodic(every="1h", name="report", catch_up=True)(noop)
    scheduler, broker = await started(first)
    clock.advance(3600)
    assert await scheduler.tick(broker) == ["report"]
    # The process restarts a minute later, still within the same period.
    clock.advance(60)
    again = make_app()
    again.periodic(every="1h", name="report", catch_up=True)(noop)
    scheduler2, broker2 = await started(again)
    assert await scheduler2.tick(broker2) == []
    assert len(await broker2.list_jobs()) == 1
    await first.aclose()
    await again.aclose()


async def test_fires_missed_during_downtime_are_skipped_by_default(
    make_app: Callable[[], Afterwork], clock: ManualClock
) -> None:
    first = make_app()
    first.periodic(every="1h", name="report", overlap=True)(noop)
    scheduler, broker = await started(first)
    clock.advance(3600)
    await scheduler.tick(broker)
    clock.advance(5 * 3600 + 60)  # down for five hours
    again = make_app()
    again.periodic(every="1h", name="report", overlap=True)(noop)
    scheduler2, broker2 = await started(again)
    assert await scheduler2.tick(broker2) == []
    assert scheduler2.next_fires()["report"] == START + 7 * 3600
    assert len(await broker2.list_jobs()) == 1
    await first.aclose()
    await again.aclose()


async def test_catch_up_runs_the_most_recent_missed_fire_once(
    make_app: Callable[[], Afterwork], clock: ManualClock
) -> None:
    first = make_app()
    first.periodic(every="1h", name="report", catch_up=True, overlap=True)(noop)
    scheduler, broker = await started(first)
    clock.advance(3600)
    await scheduler.tick(broker)
    clock.advance(5 * 3600 + 60)
    again = make_app()
    again.periodic(every="1h", name="report", catch_up=True, overlap=True)(noop)
    scheduler2, broker2 = await started(again)
    assert await scheduler2.tick(broker2) == ["report"]
    assert await scheduler2.tick(broker2) == []
    assert len(await broker2.list_jobs()) == 2
    assert (await broker2.schedule_states())["report"].last_fire == START + 6 * 3600
    await first.aclose()
    await again.aclose()


async def test_a_stalled_scheduler_runs_the_latest_due_fire_once(
    app: Afterwork, clock: ManualClock
) -> None:
    app.periodic(every="10m", name="poll", overlap=True)(noop)
    scheduler, broker = await started(app)
    clock.advance(3600 + 5)  # the loop was suspended for an hour
    assert await scheduler.tick(broker) == ["poll"]
    assert await scheduler.tick(broker) == []
    assert (await broker.schedule_states())["poll"].last_fire == START + 3600


# -- time zones and daylight saving -----------------------------------------------------


def paris(*args: int) -> float:
    return datetime(*args, tzinfo=PARIS).timestamp()  # type: ignore[misc]


async def fires_over(
    app: Afterwork, clock: ManualClock, start: float, hours: int
) -> list[datetime]:
    clock.set(start)
    scheduler, broker = await started(app)
    await run_for(clock, 300, hours * 12, [(scheduler, broker)])
    return [datetime.fromtimestamp(t, PARIS) for t in await fire_times(broker)]


async def test_a_cron_time_skipped_by_the_spring_change_runs_once_right_after_it(
    app: Afterwork, clock: ManualClock
) -> None:
    app.periodic(cron="30 2 * * *", tz="Europe/Paris", name="backup", overlap=True)(noop)
    fires = await fires_over(app, clock, paris(2026, 3, 28, 12, 0), 72)
    assert [f.strftime("%m-%d %H:%M %Z") for f in fires] == [
        "03-29 03:00 CEST",  # 02:30 does not exist on the day clocks go forward
        "03-30 02:30 CEST",
        "03-31 02:30 CEST",
    ]


async def test_a_cron_time_repeated_by_the_autumn_change_runs_once(
    app: Afterwork, clock: ManualClock
) -> None:
    app.periodic(cron="30 2 * * *", tz="Europe/Paris", name="backup", overlap=True)(noop)
    fires = await fires_over(app, clock, paris(2026, 10, 24, 12, 0), 72)
    assert [f.strftime("%m-%d %H:%M %Z") for f in fires] == [
        "10-25 02:30 CEST",  # 02:30 happens twice that night; it runs the first time only
        "10-26 02:30 CET",
        "10-27 02:30 CET",
    ]


async def test_an_hourly_cron_follows_elapsed_hours_across_the_autumn_change(
    app: Afterwork, clock: ManualClock
) -> None:
    app.periodic(cron="0 * * * *", tz="Europe/Paris", name="hourly", overlap=True)(noop)
    fires = await fires_over(app, clock, paris(2026, 10, 25, 0, 30), 4)
    assert [f.strftime("%H:%M %Z") for f in fires] == [
        "01:00 CEST",
        "02:00 CEST",
        "02:00 CET",
        "03:00 CET",
    ]


# -- overlap ------------------------------------------------------------------------------


async def test_a_fire_while_the_previous_run_is_still_going_is_skipped_and_logged(
    app: Afterwork, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    app.periodic(every="10m", name="slow")(noop)
    scheduler, broker = await started(app)
    clock.advance(600)
    assert await scheduler.tick(broker) == ["slow"]
    [first] = await broker.reserve(["default"], 1, worker="w", lease=3600)
    clock.advance(600)
    with caplog.at_level(logging.WARNING, logger="afterwork.scheduler"):
        assert await scheduler.tick(broker) == []
    assert "skipped slow" in caplog.text
    assert first.id in caplog.text
    record = next(r for r in caplog.records if "skipped" in r.getMessage())
    assert record.task == "slow"  # type: ignore[attr-defined]
    # Once the run has finished, the next fire runs again.
    from afterwork.brokers import Outcome, OutcomeKind

    await broker.settle([Outcome(job_id=first.id, worker="w", kind=OutcomeKind.SUCCEEDED)])
    clock.advance(600)
    assert await scheduler.tick(broker) == ["slow"]


async def test_overlap_lets_fires_start_while_the_previous_run_goes_on(
    app: Afterwork, clock: ManualClock
) -> None:
    app.periodic(every="10m", name="fast", overlap=True)(noop)
    scheduler, broker = await started(app)
    fired = await run_for(clock, 600, 3, [(scheduler, broker)])
    assert fired == ["fast", "fast", "fast"]


# -- where schedulers run ------------------------------------------------------------------


async def test_every_worker_runs_the_scheduler_unless_told_not_to(tmp_path: Path) -> None:
    jobs = Afterwork(f"sqlite:///{tmp_path}/jobs.db")
    jobs.periodic(every="1h")(noop)
    assert jobs.worker().scheduler is not None
    assert jobs.worker(scheduler=False).scheduler is None
    assert Afterwork("memory://").worker().scheduler is None  # no periodic tasks


runs: list[int] = []
three_runs = asyncio.Event()


async def tick_and_fail_once() -> None:
    runs.append(len(runs))
    if len(runs) >= 3:
        three_runs.set()
    if len(runs) == 1:
        raise RuntimeError("first run fails")


async def test_a_periodic_task_runs_inside_the_app_and_a_failure_does_not_stop_the_schedule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    jobs = Afterwork("memory://")
    jobs.periodic(every="0.05s", name="tick", retries=0)(tick_and_fail_once)
    three_runs.clear()
    runs.clear()
    with caplog.at_level(logging.WARNING, logger="afterwork.worker"):
        await jobs.start(heartbeat=0.05, lease=1)
        await asyncio.wait_for(three_runs.wait(), 5)
        await jobs.stop(grace_period=1)
    failure = next(r for r in caplog.records if "first run fails" in r.getMessage())
    assert failure.task == "tick"
    assert failure.error_type == "RuntimeError"
    assert len(runs) >= 3


async def test_states_record_the_last_fire_and_its_job(app: Afterwork, clock: ManualClock):
    app.periodic(every="1h", name="report")(noop)
    scheduler, broker = await started(app)
    clock.advance(3600)
    await scheduler.tick(broker)
    state = (await broker.schedule_states())["report"]
    job = await broker.get(state.last_job or "")
    assert state.last_fire == START + 3600
    assert job is not None
    assert job.status == JobStatus.QUEUED


async def test_a_fire_the_broker_could_not_record_is_fired_on_the_next_tick(
    app: Afterwork, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.periodic(every="1h", name="report")(noop)
    scheduler, broker = await started(app)
    real = broker.claim_fire
    failures = [ConnectionError("the broker blinked")]

    async def blinks(*args: Any) -> bool:
        if failures:
            raise failures.pop()
        return await real(*args)

    monkeypatch.setattr(broker, "claim_fire", blinks)
    clock.advance(3600)
    with pytest.raises(ConnectionError):
        await scheduler.tick(broker)
    assert await scheduler.tick(broker) == ["report"]
    assert (await broker.schedule_states())["report"].last_fire == START + 3600
