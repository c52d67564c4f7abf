"""The in-process worker: running jobs within limits, retries, timeouts, failures, shutdown."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from afterwork import (
    Afterwork,
    ConfigurationError,
    JobCancelled,
    JobFailed,
    JobRecord,
    JobStatus,
    ManualClock,
    Retry,
    RetryPolicy,
    Worker,
)
from afterwork.job import new_job_id
from afterwork.workeroptions import WorkerOptions

FAST: dict[str, Any] = {"heartbeat": 0.05, "lease": 2.0, "block": 0.05}
NO_WAIT = RetryPolicy(max_attempts=3, base_delay=0, jitter=False)

log: list[Any] = []
threads: list[str] = []
loops: list[asyncio.AbstractEventLoop] = []
attempts: dict[str, int] = {}
started: asyncio.Event
release: asyncio.Event
hold = threading.Event()
sync_started = threading.Event()


@pytest.fixture(autouse=True)
def fresh_state() -> Iterator[None]:
    global started, release, two_running
    started, release, two_running = asyncio.Event(), asyncio.Event(), asyncio.Event()
    active.update(now=0, max=0)
    for collection in (log, threads, loops):
        collection.clear()
    attempts.clear()
    hold.clear()
    sync_started.clear()
    yield
    hold.set()  # never leave a job thread blocked behind us


# -- task functions (module level: workers find tasks by name) -----------------------------


async def async_job(name: str) -> str:
    loops.append(asyncio.get_running_loop())
    threads.append(threading.current_thread().name)
    log.append(name)
    return name


def sync_job(name: str) -> str:
    threads.append(threading.current_thread().name)
    log.append(name)
    return name


def always_fails(reason: str) -> None:
    raise RuntimeError(reason)


def fails_twice(key: str) -> str:
    attempts[key] = attempts.get(key, 0) + 1
    if attempts[key] < 3:
        raise ConnectionError(f"attempt {attempts[key]} failed")
    return f"done after {attempts[key]}"


def asks_for_retry(delay: str) -> str:
    attempts["retry"] = attempts.get("retry", 0) + 1
    if attempts["retry"] == 1:
        raise Retry("rate limited", delay=delay)
    return "second time lucky"


def always_asks_for_retry() -> None:
    raise Retry("still busy", delay=1)


async def waits_for_release(name: str) -> str:
    log.append(f"start {name}")
    started.set()
    await release.wait()
    log.append(f"end {name}")
    return name


def blocks_until_held(name: str) -> str:
    log.append(f"start {name}")
    sync_started.set()
    hold.wait(10)
    log.append(f"end {name}")
    return name


async def hangs() -> None:
    started.set()
    await asyncio.Event().wait()


async def raises_its_own_timeout() -> None:
    raise TimeoutError("the upstream API timed out")


def raises_its_own_timeout_in_a_thread() -> None:
    raise TimeoutError("the socket read timed out")


class Unstorable:
    pass


def returns_unstorable() -> Unstorable:
    attempts["unstorable"] = attempts.get("unstorable", 0) + 1
    return Unstorable()


active = {"now": 0, "max": 0}
two_running: asyncio.Event


async def counts_concurrency(name: str) -> None:
    active["now"] += 1
    active["max"] = max(active["max"], active["now"])
    if active["now"] == 2:
        two_running.set()
    await release.wait()
    active["now"] -= 1


# -- helpers --------------------------------------------------------------------------------


async def run_burst(app: Afterwork, **options: Any) -> Worker:
    worker = app.worker(burst=True, **options)
    await asyncio.wait_for(worker.run(), 5)
    return worker


async def stop_and_wait(worker: Worker, running: asyncio.Task[None], **options: Any) -> None:
    worker.stop(**options)
    await asyncio.wait_for(running, 5)


def raw_record(app: Afterwork, task: str, payload: bytes) -> JobRecord:
    now = app.clock.now()
    return JobRecord(
        id=new_job_id(),
        task=task,
        queue="default",
        priority=0,
        payload=payload,
        status=JobStatus.QUEUED,
        run_at=now,
        enqueued_at=now,
        max_attempts=3,
        result_ttl=60,
    )


# -- options --------------------------------------------------------------------------------


REFUSED_OPTIONS = {
    "a negative grace period": (
        {"grace_period": -1},
        "worker option grace_period must be a number of seconds, 0 or more; got -1",
    ),
    "a negative block": (
        {"block": -5},
        "worker option block must be a number of seconds, more than 0; got -5",
    ),
    "a zero block": ({"block": 0}, "block must be a number of seconds, more than 0; got 0"),
    "a fractional concurrency": (
        {"concurrency": 2.5},
        "worker option concurrency must be a whole number, 1 or more; got 2.5",
    ),
    "a concurrency in a string": (
        {"concurrency": "3"},
        "worker option concurrency must be a whole number, 1 or more; got '3'",
    ),
    "no concurrency": ({"concurrency": 0}, "concurrency must be a whole number, 1 or more"),
    "a bool for a concurrency": ({"concurrency": True}, "concurrency must be a whole number"),
    "a zero lease": (
        {"lease": 0},
        "worker option lease must be a number of seconds, more than 0; got 0",
    ),
    "a lease in a string": ({"lease": "15"}, "lease must be a number of seconds, more than 0"),
    "an endless lease": ({"lease": float("inf")}, "lease must be a number of seconds"),
    "a zero heartbeat": (
        {"heartbeat": 0},
        "worker option heartbeat must be a number of seconds, more than 0; got 0",
    ),
    "a heartbeat as long as the lease": (
        {"heartbeat": 5, "lease": 5},
        "worker option heartbeat (5s) must be shorter than the lease (5s), or leases expire",
    ),
    "a negative unknown-task wait": (
        {"unknown_task_wait": -1},
        "worker option unknown_task_wait must be a number of seconds, 0 or more; got -1",
    ),
    "a zero maintenance interval": (
        {"maintenance_interval": 0},
        "worker option maintenance_interval must be a number of seconds, more than 0; got 0",
    ),
    "no queues": (
        {"queues": []},
        "worker option queues must be one or more queue names (non-empty, without commas), "
        "as a list or a comma-separated string; got []",
    ),
    "an empty queue name": ({"queues": ["a", ""]}, "queues must be one or more queue names"),
    "an empty queue in a string": ({"queues": "a,,b"}, "queues must be one or more queue names"),
    "a queue name with a comma": ({"queues": ["a,b"]}, "queues must be one or more queue names"),
    "a set of queues, which has no order": ({"queues": {"a"}}, "as a list"),
    "a burst that is not a bool": (
        {"burst": "yes"},
        "worker option burst must be True or False; got 'yes'",
    ),
    "a misspelt option": (
        {"concurency": 2},
        "unknown worker option 'concurency'; did you mean 'concurrency'?",
    ),
    "an option that is not one": (
        {"colour": "red"},
        "unknown worker option 'colour'; known: queues, concurrency, grace_period",
    ),
}


@pytest.mark.parametrize(("options", "message"), REFUSED_OPTIONS.values(), ids=REFUSED_OPTIONS)
def test_a_worker_option_that_cannot_work_is_refused_naming_the_option_and_what_it_accepts(
    options: dict[str, Any], message: str
) -> None:
    app = Afterwork("memory://")
    ways: list[Callable[[], object]] = [
        lambda: app.worker(**options),
        lambda: Worker(app, **options),
        lambda: Worker(app, WorkerOptions(concurrency=4), **options),
        lambda: WorkerOptions.of(options),
    ]
    for make in ways:
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            make()


async def test_an_embedded_worker_with_a_refused_option_starts_nothing() -> None:
    app = Afterwork("memory://")
    with pytest.raises(ConfigurationError, match="did you mean 'concurrency'"):
        await app.start(concurency=2)
    with pytest.raises(ConfigurationError, match="worker option queues"):
        await app.start(queues=[])
    assert not app.running
    assert not app.local_queue.running


def test_worker_options_have_the_documented_defaults() -> None:
    worker = Afterwork("memory://").worker()
    assert worker.options == WorkerOptions()
    assert (worker.queues, worker.concurrency, worker.burst) == (["default"], 10, False)
    assert (worker.grace_period, worker.lease, worker.unknown_task_wait) == (25, 15, 600)
    assert (worker.heartbeat, worker.maintenance_interval, worker.block) == (1, 5, 1)


def test_a_short_lease_shortens_the_heartbeat_and_the_maintenance_interval() -> None:
    worker = Afterwork("memory://").worker(lease=1.5)
    assert (worker.heartbeat, worker.maintenance_interval) == (0.5, 1.5)
    assert worker.options.heartbeat is None  # computed by the worker, not stored


def test_a_worker_takes_its_options_whole_or_changed_by_keyword() -> None:
    app = Afterwork("memory://")
    options = WorkerOptions(queues="high,low", concurrency=4, lease=3)
    assert app.worker(options).options is options
    worker = Worker(app, options, concurrency=2)
    assert (worker.queues, worker.concurrency, worker.lease) == (["high", "low"], 2, 3)
    assert options.concurrency == 4


def test_worker_options_are_normalized_and_cannot_be_changed_in_place() -> None:
    options = WorkerOptions(queues=["b", "a", "b"], lease=2, grace_period=0)
    assert (options.queues, options.lease, options.grace_period) == (("b", "a"), 2.0, 0.0)
    assert isinstance(options.lease, float)
    with pytest.raises(AttributeError):
        options.lease = 3  # type: ignore[misc]


# -- running jobs ---------------------------------------------------------------------------


async def test_async_tasks_run_on_the_workers_loop_and_sync_tasks_in_threads(
    app: Afterwork,
) -> None:
    a = await app.task(async_job).aenqueue("async")
    s = await app.task(sync_job).aenqueue("sync")
    await run_burst(app)
    assert await a.aresult(timeout=5) == "async"
    assert await s.aresult(timeout=5) == "sync"
    assert loops == [asyncio.get_running_loop()]
    main = threading.current_thread().name
    assert threads[0] == main  # the async job
    assert threads[1] != main
    assert threads[1].startswith("afterwork-job")


async def test_a_worker_never_runs_more_than_its_concurrency(app: Afterwork) -> None:
    await app.aenqueue_many(app.task(counts_concurrency).prepare(str(i)) for i in range(6))
    worker = app.worker(concurrency=2, burst=True, **FAST)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(two_running.wait(), 5)
    stats = await app.broker.stats()
    assert stats["default"].get("running") == 2
    assert stats["default"].get("queued") == 4
    assert worker.running == 2
    release.set()
    await asyncio.wait_for(running, 5)
    assert active["max"] == 2
    assert (await app.broker.stats())["default"] == {"succeeded": 6}


def test_a_worker_never_runs_more_sync_jobs_than_its_concurrency(app: Afterwork) -> None:
    app.enqueue_many(app.task(blocks_until_held).prepare(str(i)) for i in range(3))
    worker = app.worker(concurrency=2, **FAST)
    thread = threading.Thread(target=asyncio.run, args=(worker.run(),))
    thread.start()
    try:
        assert sync_started.wait(5)
        # Both slots fill; the third job waits its turn in the queue.
        stats = asyncio.run(_stats_when(app, lambda s: s.get("running") == 2))
        assert stats.get("queued") == 1
        hold.set()
        asyncio.run(_stats_when(app, lambda s: s.get("succeeded") == 3))
    finally:
        hold.set()
        worker.stop()
        thread.join(5)
    assert sorted(x for x in log if x.startswith("end")) == ["end 0", "end 1", "end 2"]


async def _stats_when(app: Afterwork, ready: Any) -> dict[str, int]:
    broker = await app.aconnect()
    for _ in range(500):
        stats = (await broker.stats()).get("default", {})
        if ready(stats):
            return stats
        await broker.settled_signal.wait(broker.settled_signal.generation, 0.01)
    raise AssertionError(f"broker never reached the expected state: {stats}")


async def test_jobs_run_in_queue_order_then_priority_then_fifo(app: Afterwork) -> None:
    task = app.task(async_job)
    for name, queue, priority in [
        ("default-0-first", "default", 0),
        ("low-100", "low", 100),
        ("default-0-second", "default", 0),
        ("high-minus-5", "high", -5),
        ("default-10", "default", 10),
        ("high-5", "high", 5),
        ("default-minus-100", "default", -100),
        ("default-0-third", "default", 0),
    ]:
        await task.using(queue=queue, priority=priority).aenqueue(name)
    await run_burst(app, queues=["high", "default", "low"], concurrency=1)
    assert log == [
        "high-5",
        "high-minus-5",
        "default-10",
        "default-0-first",
        "default-0-second",
        "default-0-third",
        "default-minus-100",
        "low-100",
    ]


async def test_a_worker_only_takes_jobs_from_its_queues(app: Afterwork) -> None:
    task = app.task(async_job)
    mine = await task.using(queue="mine").aenqueue("mine")
    other = await task.using(queue="other").aenqueue("other")
    await run_burst(app, queues=["mine"])
    assert log == ["mine"]
    assert await mine.astatus() == JobStatus.SUCCEEDED
    assert await other.astatus() == JobStatus.QUEUED


# -- failures and retries -------------------------------------------------------------------


async def test_a_raising_job_is_retried_with_backoff(
    manual_app: Afterwork, clock: ManualClock
) -> None:
    policy = RetryPolicy(max_attempts=3, base_delay=10, factor=3, jitter=False)
    handle = await manual_app.task(retries=policy)(fails_twice).aenqueue("k")

    await run_burst(manual_app)
    info = await handle.ainfo()
    assert (info.status, info.attempts) == (JobStatus.RETRYING, 1)
    assert info.run_at == clock.now() + 10
    assert info.error is not None
    assert (info.error.type, info.error.message) == ("ConnectionError", "attempt 1 failed")

    clock.advance(9.9)
    await run_burst(manual_app)  # not yet: nothing ready, the burst ends at once
    assert attempts["k"] == 1

    clock.advance(0.1)
    await run_burst(manual_app)
    info = await handle.ainfo()
    assert (info.status, info.attempts, info.run_at) == (JobStatus.RETRYING, 2, clock.now() + 30)

    clock.advance(30)
    await run_burst(manual_app)
    assert await handle.aresult(timeout=5) == "done after 3"
    assert (await handle.ainfo()).attempts == 3


async def test_the_default_backoff_waits_about_a_second_then_two(
    manual_app: Afterwork, clock: ManualClock
) -> None:
    handle = await manual_app.task(always_fails).aenqueue("x")
    await run_burst(manual_app)
    first_wait = (await handle.ainfo()).run_at - clock.now()
    assert 0.5 <= first_wait <= 1
    clock.advance(first_wait)
    await run_burst(manual_app)
    second_wait = (await handle.ainfo()).run_at - clock.now()
    assert 1 <= second_wait <= 2


async def test_a_job_that_keeps_failing_ends_in_the_dead_letter_queue_with_its_error(
    manual_app: Afterwork, clock: ManualClock
) -> None:
    handle = await manual_app.task(retries=2)(always_fails).aenqueue("database is down")
    for _ in range(3):
        await run_burst(manual_app)
        clock.advance(3600)
    info = await handle.ainfo()
    assert (info.status, info.attempts, info.max_attempts) == (JobStatus.FAILED, 3, 3)
    assert info.error is not None
    assert (info.error.type, info.error.message) == ("RuntimeError", "database is down")
    assert "raise RuntimeError(reason)" in info.error.traceback
    [dead] = await manual_app.broker.list_jobs(status=JobStatus.FAILED)
    assert dead.id == handle.id
    with pytest.raises(JobFailed, match="database is down"):
        await handle.aresult(timeout=5)


async def test_a_burst_worker_runs_retries_that_are_due_at_once(app: Afterwork) -> None:
    handle = await app.task(retries=NO_WAIT)(fails_twice).aenqueue("now")
    await run_burst(app)
    assert await handle.aresult(timeout=5) == "done after 3"


async def test_retries_zero_means_a_single_attempt(app: Afterwork) -> None:
    handle = await app.task(retries=0)(always_fails).aenqueue("once")
    await run_burst(app)
    info = await handle.ainfo()
    assert (info.status, info.attempts) == (JobStatus.FAILED, 1)


async def test_raising_retry_asks_for_another_attempt_after_its_delay(
    manual_app: Afterwork, clock: ManualClock
) -> None:
    handle = await manual_app.task(asks_for_retry).aenqueue("30s")
    await run_burst(manual_app)
    info = await handle.ainfo()
    assert (info.status, info.attempts, info.run_at) == (
        JobStatus.RETRYING,
        1,
        clock.now() + 30,
    )
    assert info.error is not None
    assert info.error.type == "afterwork.retry.Retry"
    assert info.error.message == "rate limited"
    clock.advance(30)
    await run_burst(manual_app)
    assert await handle.aresult(timeout=5) == "second time lucky"


async def test_retry_on_the_last_attempt_sends_the_job_to_the_dead_letter_queue(
    manual_app: Afterwork, clock: ManualClock
) -> None:
    handle = await manual_app.task(retries=1)(always_asks_for_retry).aenqueue()
    await run_burst(manual_app)
    clock.advance(1)
    await run_burst(manual_app)
    with pytest.raises(JobFailed) as excinfo:
        await handle.aresult(timeout=5)
    assert excinfo.value.error_type == "afterwork.retry.Retry"
    assert excinfo.value.message == "still busy"


# -- timeouts -------------------------------------------------------------------------------


async def test_an_async_job_past_its_timeout_is_stopped_and_counts_as_a_failed_attempt(
    app: Afterwork,
) -> None:
    handle = await app.task(timeout=0.05, retries=RetryPolicy(base_delay=60))(hangs).aenqueue()
    await run_burst(app)
    info = await handle.ainfo()
    assert (info.status, info.attempts) == (JobStatus.RETRYING, 1)
    assert info.error is not None
    assert info.error.type == "afterwork.errors.JobTimeout"
    assert "timeout of 0.05s" in info.error.message


async def test_a_timed_out_job_with_no_retries_left_fails_with_job_timeout(
    app: Afterwork,
) -> None:
    handle = await app.task(timeout=0.05, retries=0)(hangs).aenqueue()
    await run_burst(app)
    with pytest.raises(JobFailed) as excinfo:
        await handle.aresult(timeout=5)
    assert excinfo.value.error_type.endswith("JobTimeout")


async def test_a_tasks_own_timeout_error_is_not_mistaken_for_its_time_limit(
    app: Afterwork,
) -> None:
    handle = await app.task(timeout=30, retries=0)(raises_its_own_timeout).aenqueue()
    await run_burst(app)
    with pytest.raises(JobFailed) as excinfo:
        await handle.aresult(timeout=5)
    assert excinfo.value.error_type == "TimeoutError"
    assert excinfo.value.message == "the upstream API timed out"


async def test_a_sync_tasks_own_timeout_error_is_not_mistaken_for_its_time_limit(
    app: Afterwork,
) -> None:
    task = app.task(timeout=30, retries=0)(raises_its_own_timeout_in_a_thread)
    handle = await task.aenqueue()
    worker = await run_burst(app)
    with pytest.raises(JobFailed) as excinfo:
        await handle.aresult(timeout=5)
    assert excinfo.value.error_type == "TimeoutError"
    assert worker.abandoned_threads == 0


async def test_a_sync_job_past_its_timeout_is_abandoned_logged_and_the_worker_goes_on(
    app: Afterwork, caplog: pytest.LogCaptureFixture
) -> None:
    stuck = await app.task(timeout=0.05, retries=0)(blocks_until_held).aenqueue("stuck")
    after = await app.task(sync_job).aenqueue("after")
    caplog.set_level(logging.WARNING, logger="afterwork.worker")
    worker = await run_burst(app, concurrency=1)
    # The abandoned thread is still blocked, yet the next job ran.
    assert not hold.is_set()
    assert await after.aresult(timeout=5) == "after"
    with pytest.raises(JobFailed) as excinfo:
        await stuck.aresult(timeout=5)
    assert excinfo.value.error_type.endswith("JobTimeout")
    assert worker.abandoned_threads == 1
    [abandoned] = [r for r in caplog.records if "abandoned" in r.getMessage()]
    assert abandoned.levelno == logging.WARNING
    assert abandoned.job_id == stuck.id  # type: ignore[attr-defined]
    assert abandoned.task.endswith("blocks_until_held")  # type: ignore[attr-defined]


def test_cancelling_a_running_sync_job_frees_its_slot_for_the_next_job(app: Afterwork) -> None:
    stuck = app.task(blocks_until_held).enqueue("stuck")
    after = app.task(sync_job).enqueue("after")
    worker = app.worker(concurrency=1, **FAST)
    thread = threading.Thread(target=asyncio.run, args=(worker.run(),))
    thread.start()
    try:
        assert sync_started.wait(5)
        assert stuck.cancel() is True
        with pytest.raises(JobCancelled):
            stuck.result(timeout=5)
        # The cancelled job's thread cannot be stopped and is still blocked, yet
        # the next job does not wait behind it.
        assert after.result(timeout=5) == "after"
        assert not hold.is_set()
    finally:
        hold.set()
        worker.stop()
        thread.join(5)


# -- jobs that cannot run -------------------------------------------------------------------


async def test_a_job_naming_an_unknown_task_waits_for_a_worker_that_knows_it(
    manual_app: Afterwork, clock: ManualClock
) -> None:
    app = manual_app
    [unknown] = await app.broker.enqueue(
        [raw_record(app, "billing.charge", app.serializer.dumps([[], {}]))]
    )
    fine = await app.task(async_job).aenqueue("fine")

    await run_burst(app, unknown_task_wait=60)

    assert await fine.aresult(timeout=5) == "fine"
    waiting = await app.job(unknown.id).ainfo()
    assert waiting.status_at(clock.now()) == JobStatus.SCHEDULED
    assert waiting.attempts == 0  # it never ran: no attempt is spent
    assert waiting.error is not None
    assert waiting.error.type == "afterwork.errors.UnknownTask"
    assert "billing.charge" in waiting.error.message
    # Offered again and again, less often as it waits, until the wait is over.
    offers = 1
    while (record := await app.job(unknown.id).ainfo()).status != JobStatus.FAILED:
        clock.advance(record.run_at - clock.now())
        await run_burst(app, unknown_task_wait=60)
        offers += 1
    assert 3 <= offers <= 15  # each wait half the time waited so far, 1 to 30 s
    assert clock.now() - record.enqueued_at >= 60
    assert record.attempts == 1
    with pytest.raises(JobFailed, match="no worker that knows it claimed the job within 60s"):
        await app.job(unknown.id).aresult(timeout=5)


async def test_a_job_whose_payload_does_not_decode_goes_to_the_dead_letter_queue(
    app: Afterwork,
) -> None:
    task = app.task(async_job)
    [garbage] = await app.broker.enqueue([raw_record(app, task.name, b"\x00\xff not json")])
    [not_a_call] = await app.broker.enqueue([raw_record(app, task.name, b'{"a": 1}')])
    fine = await task.aenqueue("fine")
    await run_burst(app)
    assert await fine.aresult(timeout=5) == "fine"
    for record in (garbage, not_a_call):
        with pytest.raises(JobFailed) as excinfo:
            await app.job(record.id).aresult(timeout=5)
        assert excinfo.value.error_type == "afterwork.errors.SerializationError"
    assert log == ["fine"]


async def test_a_result_the_codec_cannot_carry_fails_the_job_without_running_it_again(
    app: Afterwork,
) -> None:
    task = app.task(retries=NO_WAIT)(returns_unstorable)
    handle = await task.aenqueue()
    await run_burst(app)
    with pytest.raises(JobFailed) as excinfo:
        await handle.aresult(timeout=5)
    assert excinfo.value.error_type == "afterwork.errors.SerializationError"
    assert f"{task.name} returned a value of type Unstorable, which cannot be stored" in (
        excinfo.value.message
    )
    assert attempts["unstorable"] == 1


# -- logging --------------------------------------------------------------------------------


async def test_every_failure_is_logged_with_task_job_attempt_and_error_type(
    manual_app: Afterwork, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="afterwork.worker")
    task = manual_app.task(retries=1)(always_fails)
    handle = await task.aenqueue("boom")
    await run_burst(manual_app)
    clock.advance(3600)
    await run_burst(manual_app)
    failures = [r for r in caplog.records if hasattr(r, "error_type") and hasattr(r, "job_id")]
    assert [(r.levelno, r.attempt) for r in failures] == [  # type: ignore[attr-defined]
        (logging.WARNING, 1),
        (logging.ERROR, 2),
    ]
    for record in failures:
        assert record.task == task.name  # type: ignore[attr-defined]
        assert record.job_id == handle.id  # type: ignore[attr-defined]
        assert record.error_type == "RuntimeError"  # type: ignore[attr-defined]
        assert "boom" in record.getMessage()
        assert task.name in record.getMessage()
    assert "retrying in" in failures[0].getMessage()
    assert "failed for good" in failures[1].getMessage()


async def test_a_job_that_cannot_run_is_logged_with_its_reason(
    app: Afterwork, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="afterwork.worker")
    [record] = await app.broker.enqueue([raw_record(app, "gone.task", b"[[], {}]")])
    await run_burst(app, unknown_task_wait=0)
    [logged] = [r for r in caplog.records if getattr(r, "job_id", None) == record.id]
    assert logged.task == "gone.task"  # type: ignore[attr-defined]
    assert logged.attempt == 1  # type: ignore[attr-defined]
    assert logged.error_type == "afterwork.errors.UnknownTask"  # type: ignore[attr-defined]


# -- stopping -------------------------------------------------------------------------------


async def test_stop_lets_running_jobs_finish_and_claims_nothing_more(app: Afterwork) -> None:
    task = app.task(waits_for_release)
    first = await task.aenqueue("first")
    second = await task.aenqueue("second")
    worker = app.worker(concurrency=1, grace_period=5, **FAST)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    worker.stop()
    release.set()
    await asyncio.wait_for(running, 5)
    assert await first.aresult(timeout=1) == "first"
    info = await second.ainfo()
    assert (info.status, info.attempts) == (JobStatus.QUEUED, 0)
    assert log == ["start first", "end first"]


async def test_a_job_unfinished_after_the_grace_period_is_put_back_without_counting(
    app: Afterwork,
) -> None:
    handle = await app.task(hangs).aenqueue()
    worker = app.worker(grace_period=0.05, **FAST)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    await stop_and_wait(worker, running)
    info = await handle.ainfo()
    assert (info.status, info.attempts, info.worker) == (JobStatus.QUEUED, 0, None)
    assert info.error is None


def test_an_unfinished_sync_job_is_put_back_too(app: Afterwork) -> None:
    handle = app.task(blocks_until_held).enqueue("slow")
    worker = app.worker(grace_period=0.05, **FAST)
    thread = threading.Thread(target=asyncio.run, args=(worker.run(),))
    thread.start()
    assert sync_started.wait(5)
    worker.stop()
    thread.join(5)
    assert not thread.is_alive()
    info = handle.info()
    assert (info.status, info.attempts) == (JobStatus.QUEUED, 0)


async def test_stop_immediately_puts_running_jobs_back_at_once(app: Afterwork) -> None:
    handle = await app.task(hangs).aenqueue()
    worker = app.worker(grace_period=60, **FAST)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    await stop_and_wait(worker, running, immediately=True)
    assert (await handle.ainfo()).status == JobStatus.QUEUED


async def test_a_second_stop_during_the_grace_period_stops_at_once(app: Afterwork) -> None:
    handle = await app.task(hangs).aenqueue()
    worker = app.worker(grace_period=60, **FAST)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    worker.stop()
    await stop_and_wait(worker, running)
    assert (await handle.ainfo()).status == JobStatus.QUEUED


async def test_a_put_back_job_runs_again_on_the_next_worker(app: Afterwork) -> None:
    handle = await app.task(waits_for_release).aenqueue("again")
    worker = app.worker(grace_period=0.05, **FAST)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    await stop_and_wait(worker, running)
    release.set()
    await run_burst(app)
    assert await handle.aresult(timeout=5) == "again"
    assert (await handle.ainfo()).attempts == 1


async def test_stop_before_the_worker_has_started_is_not_lost(app: Afterwork) -> None:
    worker = app.worker(**FAST)
    running = asyncio.create_task(worker.run())
    worker.stop()
    await asyncio.wait_for(running, 5)


async def test_stop_from_another_thread_stops_the_worker(app: Afterwork) -> None:
    handle = await app.task(async_job).aenqueue("x")
    worker = app.worker(**FAST)
    running = asyncio.create_task(worker.run())
    assert await handle.aresult(timeout=5) == "x"
    await asyncio.to_thread(worker.stop)
    await asyncio.wait_for(running, 5)


async def test_a_burst_worker_exits_when_nothing_is_ready(
    manual_app: Afterwork, clock: ManualClock
) -> None:
    await run_burst(manual_app)  # nothing at all
    later = await manual_app.task(async_job).using(delay="1h").aenqueue("later")
    now = await manual_app.task(async_job).aenqueue("now")
    worker = await run_burst(manual_app)
    assert log == ["now"]
    assert worker.processed == 1
    assert await now.astatus() == JobStatus.SUCCEEDED
    assert await later.astatus() == JobStatus.SCHEDULED


async def test_a_running_worker_is_listed_by_the_broker_until_it_stops(app: Afterwork) -> None:
    handle = await app.task(waits_for_release).aenqueue("x")
    worker = app.worker(queues=["default", "other"], concurrency=4, **FAST)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    [listed] = await app.broker.workers(alive_within=60)
    assert (listed.id, listed.queues, listed.concurrency) == (
        worker.id,
        ["default", "other"],
        4,
    )
    release.set()
    await handle.aresult(timeout=5)
    await stop_and_wait(worker, running)
    assert await app.broker.workers(alive_within=60) == []
    assert (worker.processed, worker.failed) == (1, 0)


async def test_a_job_that_fails_outside_its_task_goes_to_the_dead_letter_queue_with_that_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    jobs = Afterwork(f"sqlite:///{tmp_path}/jobs.db")
    task = jobs.task(name="outside")(sync_job)
    broken = await task.aenqueue("x")

    def resolver_breaks(name: str) -> Any:
        raise RuntimeError("the resolver broke")

    monkeypatch.setattr(jobs, "resolve_task", resolver_breaks)
    await asyncio.wait_for(jobs.worker(burst=True).run(), 5)

    record = await broken.ainfo()
    assert record.status == JobStatus.FAILED
    assert record.error is not None
    assert (record.error.type, record.error.message) == ("RuntimeError", "the resolver broke")
    await jobs.aclose()


# -- what a worker says ---------------------------------------------------------------


async def test_a_worker_warns_of_tasks_on_queues_it_does_not_serve(
    app: Afterwork, caplog: pytest.LogCaptureFixture
) -> None:
    app.task(async_job)
    app.task(queue="reports")(sync_job)
    caplog.set_level(logging.WARNING, logger="afterwork.worker")

    await asyncio.wait_for(app.worker(queues=["default"], burst=True, **FAST).run(), 5)

    [warning] = [r.getMessage() for r in caplog.records if "not served" in r.getMessage()]
    assert warning == (
        "queue 'reports' is not served by this worker, so jobs of test_worker.sync_job wait "
        "for a worker that serves it (--queues default,reports)"
    )


async def test_a_worker_counts_each_kind_of_outcome_apart_when_it_stops(
    app: Afterwork, caplog: pytest.LogCaptureFixture
) -> None:
    ok = app.task(async_job)
    flaky = app.task(retries=RetryPolicy(max_attempts=2, base_delay=60, jitter=False))(always_fails)
    doomed = app.task(retries=0)(fails_twice)
    await ok.aenqueue("a")
    await ok.aenqueue("b")
    await flaky.aenqueue("x")
    await doomed.aenqueue("y")
    caplog.set_level(logging.INFO, logger="afterwork.worker")

    await asyncio.wait_for(app.worker(burst=True, **FAST).run(), 5)
    await asyncio.wait_for(app.worker(burst=True, **FAST).run(), 5)

    closing = [r.getMessage() for r in caplog.records if "stopped:" in r.getMessage()]
    assert [line.partition(": ")[2] for line in closing] == [
        "4 attempts: 2 succeeded, 1 failed and will be retried, 1 failed for good",
        "it ran no jobs",
    ]


async def test_jobs_of_a_task_the_worker_does_not_know_are_warned_of_once_a_task(
    app: Afterwork, caplog: pytest.LogCaptureFixture
) -> None:
    payload = app.serializer.dumps([[], {}])
    await app.broker.enqueue([raw_record(app, "billing.charge", payload) for _ in range(3)])
    await app.broker.enqueue([raw_record(app, "billing.refund", payload)])
    caplog.set_level(logging.WARNING, logger="afterwork.worker")

    worker = await run_burst(app)

    warned = [r.task for r in caplog.records if "does not know the task" in r.getMessage()]  # type: ignore[attr-defined]
    assert sorted(warned) == ["billing.charge", "billing.refund"]
    assert worker.tally == {"left for a worker that knows their task": 4}
