"""Job handles: status, result, cancel and info, in sync and async twins."""

from __future__ import annotations

import asyncio
import threading

import pytest

from afterwork import (
    Afterwork,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobStatus,
    ManualClock,
    ResultTimeout,
    Worker,
)

FAST = {"heartbeat": 0.05, "lease": 2.0, "block": 0.05}

started: asyncio.Event
release: asyncio.Event
ran: list[str] = []


@pytest.fixture(autouse=True)
def fresh_state() -> None:
    global started, release
    started, release = asyncio.Event(), asyncio.Event()
    ran.clear()


def add(a: int, b: int) -> int:
    ran.append("add")
    return a + b


async def aadd(a: int, b: int) -> int:
    ran.append("aadd")
    return a + b


def nothing() -> None:
    ran.append("nothing")


def explode(message: str) -> None:
    raise KeyError(message)


async def wait_for_release() -> str:
    started.set()
    try:
        await release.wait()
    except asyncio.CancelledError:
        ran.append("stopped")
        raise
    return "released"


async def run_burst(app: Afterwork, **options: object) -> Worker:
    worker = app.worker(burst=True, **options)  # type: ignore[arg-type]
    await asyncio.wait_for(worker.run(), 5)
    return worker


# -- result -------------------------------------------------------------------------------


async def test_aresult_returns_the_value_of_an_async_task(app: Afterwork) -> None:
    handle = await app.task(aadd).aenqueue(2, 3)
    await run_burst(app)
    assert await handle.aresult(timeout=5) == 5


async def test_aresult_returns_the_value_of_a_sync_task(app: Afterwork) -> None:
    handle = await app.task(add).aenqueue(2, 3)
    await run_burst(app)
    assert await handle.aresult(timeout=5) == 5


async def test_a_task_that_returns_nothing_has_a_result_of_none(app: Afterwork) -> None:
    handle = await app.task(nothing).aenqueue()
    await run_burst(app)
    assert await handle.aresult(timeout=5) is None
    assert ran == ["nothing"]


async def test_aresult_waits_for_a_job_that_a_running_worker_finishes(app: Afterwork) -> None:
    worker = app.worker(**FAST)
    running = asyncio.create_task(worker.run())
    try:
        handle = await app.task(aadd).aenqueue(20, 22)
        assert await handle.aresult(timeout=5) == 42
    finally:
        worker.stop()
        await asyncio.wait_for(running, 5)


def test_result_from_sync_code_waits_for_a_worker_in_another_thread(app: Afterwork) -> None:
    task = app.task(add)
    worker = app.worker(**FAST)
    thread = threading.Thread(target=asyncio.run, args=(worker.run(),))
    thread.start()
    try:
        assert task.enqueue(40, 2).result(timeout=5) == 42
    finally:
        worker.stop()
        thread.join(5)
    assert not thread.is_alive()


async def test_a_failed_job_raises_job_failed_with_the_remote_error(app: Afterwork) -> None:
    handle = await app.task(retries=0)(explode).aenqueue("no such user")
    await run_burst(app)
    with pytest.raises(JobFailed) as excinfo:
        await handle.aresult(timeout=5)
    failure = excinfo.value
    assert failure.job_id == handle.id
    assert failure.error_type == "KeyError"
    assert failure.message == "'no such user'"
    assert "in explode" in failure.traceback
    assert "raise KeyError(message)" in failure.traceback
    assert handle.id in str(failure)
    assert "KeyError" in str(failure)


def test_a_failed_job_raises_job_failed_from_sync_code_too(app: Afterwork) -> None:
    handle = app.task(retries=0)(explode).enqueue("gone")
    asyncio.run(run_burst(app))
    with pytest.raises(JobFailed, match="KeyError"):
        handle.result(timeout=5)


async def test_aresult_raises_result_timeout_when_the_job_is_not_done_in_time(
    app: Afterwork,
) -> None:
    handle = await app.task(aadd).aenqueue(1, 1)
    with pytest.raises(ResultTimeout, match="still queued"):
        await handle.aresult(timeout=0.05)
    with pytest.raises(TimeoutError):  # ResultTimeout is a TimeoutError
        await handle.aresult(timeout=0)


def test_result_raises_result_timeout_from_sync_code_too(app: Afterwork) -> None:
    handle = app.task(add).enqueue(1, 1)
    with pytest.raises(ResultTimeout):
        handle.result(timeout=0.05)


# -- status ---------------------------------------------------------------------------------


async def test_status_goes_from_scheduled_to_queued_to_running_to_succeeded(
    manual_app: Afterwork, clock: ManualClock
) -> None:
    handle = await manual_app.task(wait_for_release).using(delay="10s").aenqueue()
    assert await handle.astatus() == JobStatus.SCHEDULED
    clock.advance(10)
    assert await handle.astatus() == JobStatus.QUEUED

    worker = manual_app.worker(**FAST)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(started.wait(), 5)
        assert await handle.astatus() == JobStatus.RUNNING
        release.set()
        assert await handle.aresult(timeout=5) == "released"
        assert await handle.astatus() == JobStatus.SUCCEEDED
    finally:
        worker.stop()
        await asyncio.wait_for(running, 5)


def test_status_from_sync_code(app: Afterwork) -> None:
    handle = app.task(add).enqueue(1, 2)
    assert handle.status() == JobStatus.QUEUED
    asyncio.run(run_burst(app))
    assert handle.status() == JobStatus.SUCCEEDED
    assert handle.result() == 3


async def test_a_failed_jobs_status_is_failed(app: Afterwork) -> None:
    handle = await app.task(retries=0)(explode).aenqueue("x")
    await run_burst(app)
    assert await handle.astatus() == JobStatus.FAILED


# -- cancel ---------------------------------------------------------------------------------


async def test_a_cancelled_queued_job_never_runs_and_has_no_result(app: Afterwork) -> None:
    handle = await app.task(aadd).aenqueue(1, 2)
    assert await handle.acancel() is True
    assert await handle.astatus() == JobStatus.CANCELLED
    await run_burst(app)
    assert ran == []
    with pytest.raises(JobCancelled):
        await handle.aresult(timeout=5)


def test_a_cancelled_scheduled_job_never_runs_from_sync_code(
    manual_app: Afterwork, clock: ManualClock
) -> None:
    handle = manual_app.task(add).using(delay=5).enqueue(1, 2)
    assert handle.cancel() is True
    clock.advance(10)
    asyncio.run(run_burst(manual_app))
    assert ran == []
    assert handle.status() == JobStatus.CANCELLED
    with pytest.raises(JobCancelled):
        handle.result(timeout=5)


async def test_cancelling_a_running_async_job_stops_it(app: Afterwork) -> None:
    handle = await app.task(wait_for_release).aenqueue()
    worker = app.worker(**FAST)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(started.wait(), 5)
        assert await handle.acancel() is True
        # The worker hears of the cancel within its heartbeat and stops the job.
        with pytest.raises(JobCancelled):
            await handle.aresult(timeout=5)
        assert ran == ["stopped"]
        assert await handle.astatus() == JobStatus.CANCELLED
    finally:
        release.set()
        worker.stop()
        await asyncio.wait_for(running, 5)


async def test_a_finished_job_cannot_be_cancelled(app: Afterwork) -> None:
    handle = await app.task(aadd).aenqueue(1, 2)
    await run_burst(app)
    assert await handle.acancel() is False
    assert await handle.aresult(timeout=5) == 3


# -- info -----------------------------------------------------------------------------------


async def test_info_tells_attempts_timestamps_worker_and_error(
    manual_app: Afterwork, clock: ManualClock
) -> None:
    handle = await manual_app.task(retries=1)(explode).aenqueue("boom")
    enqueued = clock.now()
    info = await handle.ainfo()
    assert (info.attempts, info.max_attempts, info.enqueued_at) == (0, 2, enqueued)
    assert (info.started_at, info.finished_at, info.worker, info.error) == (None, None, None, None)

    clock.advance(1)
    await run_burst(manual_app)
    info = await handle.ainfo()
    assert info.status == JobStatus.RETRYING
    assert info.attempts == 1
    assert info.started_at == enqueued + 1
    assert info.error is not None
    assert (info.error.type, info.error.message) == ("KeyError", "'boom'")

    clock.advance(60)
    await run_burst(manual_app)
    info = await handle.ainfo()
    assert (info.status, info.attempts) == (JobStatus.FAILED, 2)
    assert info.finished_at == enqueued + 61
    assert info.error is not None
    assert "raise KeyError" in info.error.traceback


async def test_info_names_the_worker_running_the_job(app: Afterwork) -> None:
    handle = await app.task(wait_for_release).aenqueue()
    worker = app.worker(**FAST)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(started.wait(), 5)
        info = await handle.ainfo()
        assert info.worker == worker.id
        assert info.attempts == 1
        assert info.started_at is not None
    finally:
        release.set()
        worker.stop()
        await asyncio.wait_for(running, 5)


def test_info_from_sync_code(app: Afterwork) -> None:
    handle = app.task(add).enqueue(1, 2)
    assert handle.info().id == handle.id
    assert handle.info().status == JobStatus.QUEUED


# -- unknown ids ----------------------------------------------------------------------------


async def test_an_unknown_id_raises_job_not_found_from_every_async_method(
    app: Afterwork,
) -> None:
    handle = app.job("no-such-job")
    with pytest.raises(JobNotFound, match="no-such-job"):
        await handle.astatus()
    with pytest.raises(JobNotFound):
        await handle.ainfo()
    with pytest.raises(JobNotFound):
        await handle.aresult(timeout=1)
    with pytest.raises(JobNotFound):
        await handle.acancel()


def test_an_unknown_id_raises_job_not_found_from_every_sync_method(app: Afterwork) -> None:
    handle = app.job("no-such-job")
    with pytest.raises(JobNotFound):
        handle.status()
    with pytest.raises(JobNotFound):
        handle.info()
    with pytest.raises(JobNotFound):
        handle.result(timeout=1)
    with pytest.raises(JobNotFound):
        handle.cancel()
    with pytest.raises(LookupError):  # JobNotFound is a LookupError
        handle.status()


def test_a_handle_from_an_id_reads_the_same_job(app: Afterwork) -> None:
    handle = app.task(add).enqueue(1, 2)
    again = app.job(handle.id)
    assert again == handle
    assert hash(again) == hash(handle)
    assert again.info().id == handle.id
    assert handle.id in repr(handle)
