"""Hooks: each point is called at its moment, and a failing hook never breaks a job."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from pathlib import Path
from typing import Any

import pytest

from afterwork import Afterwork, ErrorInfo, Hook, JobRecord, ManualClock, Worker
from afterwork.hooks import HookRunner

events: list[tuple[Any, ...]] = []


def double(x: int) -> int:
    return 2 * x


def broken(message: str) -> None:
    raise ValueError(message)


def returns_nothing() -> None:
    return None


hanging: asyncio.Event | None = None


async def hangs() -> None:
    assert hanging is not None
    hanging.set()
    await asyncio.Event().wait()


class Recorder(Hook):
    def before_enqueue(self, job: JobRecord) -> None:
        events.append(("before_enqueue", job.task, job.id))

    def after_enqueue(self, job: JobRecord) -> None:
        events.append(("after_enqueue", job.task, job.id))

    def before_run(self, worker: Worker, job: JobRecord) -> None:
        events.append(("before_run", job.task, job.attempts))

    def after_run(
        self, worker: Worker, job: JobRecord, result: Any, error: BaseException | None
    ) -> None:
        events.append(("after_run", job.task, result, type(error).__name__ if error else None))

    def on_retry(self, worker: Worker, job: JobRecord, error: ErrorInfo, delay: float) -> None:
        events.append(("on_retry", job.task, error.type, delay))

    def on_dead_letter(self, worker: Worker, job: JobRecord, error: ErrorInfo) -> None:
        events.append(("on_dead_letter", job.task, error.type, error.message))

    def on_worker_start(self, worker: Worker) -> None:
        events.append(("on_worker_start", worker.id))

    def on_worker_stop(self, worker: Worker) -> None:
        events.append(("on_worker_stop", worker.id))


class Explodes(Hook):
    """Every point raises."""

    def before_enqueue(self, job: JobRecord) -> None:
        raise RuntimeError("before_enqueue hook bug")

    def after_enqueue(self, job: JobRecord) -> None:
        raise RuntimeError("after_enqueue hook bug")

    def before_run(self, worker: Worker, job: JobRecord) -> None:
        raise RuntimeError("before_run hook bug")

    def after_run(
        self, worker: Worker, job: JobRecord, result: Any, error: BaseException | None
    ) -> None:
        raise RuntimeError("after_run hook bug")

    def on_worker_start(self, worker: Worker) -> None:
        raise RuntimeError("on_worker_start hook bug")

    def on_worker_stop(self, worker: Worker) -> None:
        raise RuntimeError("on_worker_stop hook bug")


@pytest.fixture(autouse=True)
def no_events() -> None:
    events.clear()


@pytest.fixture
def hooked(url: str) -> Any:
    clock = ManualClock()
    jobs = Afterwork(url, hooks=[Recorder()], clock=clock)
    yield jobs, clock
    jobs.close()


async def run_burst(app: Afterwork, **options: Any) -> Worker:
    worker = app.worker(burst=True, **options)
    await asyncio.wait_for(worker.run(), 5)
    return worker


async def test_enqueue_calls_before_and_after_enqueue(hooked: Any) -> None:
    app, _ = hooked
    task = app.task(double)
    handle = await task.aenqueue(1)
    assert events == [
        ("before_enqueue", task.name, handle.id),
        ("after_enqueue", task.name, handle.id),
    ]


def test_a_batch_calls_the_enqueue_hooks_for_each_job(hooked: Any) -> None:
    app, _ = hooked
    task = app.task(double)
    handles = app.enqueue_many(task.prepare(i) for i in range(2))
    ids = [h.id for h in handles]
    assert events == [
        ("before_enqueue", task.name, ids[0]),
        ("before_enqueue", task.name, ids[1]),
        ("after_enqueue", task.name, ids[0]),
        ("after_enqueue", task.name, ids[1]),
    ]


def test_after_enqueue_sees_the_job_a_unique_key_found(hooked: Any) -> None:
    app, _ = hooked
    task = app.task(double).using(unique_key="once")
    first = task.enqueue(1)
    events.clear()
    task.enqueue(2)
    assert events[1] == ("after_enqueue", task.name, first.id)


async def test_a_successful_job_calls_worker_and_run_hooks_in_order(hooked: Any) -> None:
    app, _ = hooked
    task = app.task(double)
    await task.aenqueue(21)
    events.clear()
    worker = await run_burst(app)
    assert events == [
        ("on_worker_start", worker.id),
        ("before_run", task.name, 1),
        ("after_run", task.name, 42, None),
        ("on_worker_stop", worker.id),
    ]


async def test_a_failing_job_calls_on_retry_then_on_dead_letter(hooked: Any) -> None:
    app, clock = hooked
    task = app.task(retries=1)(broken)
    await task.aenqueue("bad input")
    events.clear()
    await run_burst(app)
    run_events = [e for e in events if e[0] not in ("on_worker_start", "on_worker_stop")]
    assert run_events[:2] == [
        ("before_run", task.name, 1),
        ("after_run", task.name, None, "ValueError"),
    ]
    [(point, name, error_type, delay)] = run_events[2:]
    assert (point, name, error_type) == ("on_retry", task.name, "ValueError")
    assert 0.5 <= delay <= 1

    events.clear()
    clock.advance(3600)
    await run_burst(app)
    assert ("on_dead_letter", task.name, "ValueError", "bad input") in events
    assert not [e for e in events if e[0] == "on_retry"]


async def test_a_job_that_cannot_run_calls_on_dead_letter(hooked: Any) -> None:
    app, _ = hooked
    now = app.clock.now()
    record = JobRecord(
        id="0" * 32,
        task="missing.task",
        queue="default",
        priority=0,
        payload=b"[[], {}]",
        status="queued",  # type: ignore[arg-type]
        run_at=now,
        enqueued_at=now,
        max_attempts=3,
        result_ttl=60,
    )
    await app.broker.enqueue([record])
    await run_burst(app, unknown_task_wait=0)  # no waiting for a worker that knows it
    [dead] = [e for e in events if e[0] == "on_dead_letter"]
    assert dead[1:3] == ("missing.task", "afterwork.errors.UnknownTask")
    assert not [e for e in events if e[0] == "before_run"]


async def test_a_hook_that_raises_is_logged_and_the_job_still_succeeds(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="afterwork.hooks")
    app = Afterwork(url, hooks=[Explodes(), Recorder()])
    try:
        handle = await app.task(double).aenqueue(4)
        await run_burst(app)
        assert await handle.aresult(timeout=5) == 8
    finally:
        await app.aclose()
    failed = {r.hook: r for r in caplog.records if hasattr(r, "hook")}  # type: ignore[attr-defined]
    assert set(failed) == {
        "before_enqueue",
        "after_enqueue",
        "before_run",
        "after_run",
        "on_worker_start",
        "on_worker_stop",
    }
    for point, record in failed.items():
        assert record.error_type == "RuntimeError"  # type: ignore[attr-defined]
        assert f"Explodes.{point}" in record.getMessage()
        assert record.exc_info is not None  # the hook's traceback is in the log
    # The hooks after a failing one still run.
    assert [e[0] for e in events if e[0] in ("before_run", "after_run")] == [
        "before_run",
        "after_run",
    ]


def test_only_points_a_hook_overrides_are_called() -> None:
    class OnlyStart(Hook):
        def on_worker_start(self, worker: Worker) -> None: ...

    runner = HookRunner([OnlyStart()])
    assert runner.active("on_worker_start")
    assert not runner.active("before_enqueue")
    assert not HookRunner([]).active("on_worker_start")


def test_a_hook_with_no_overrides_is_accepted(tmp_path: Path) -> None:
    app = Afterwork(f"sqlite:///{tmp_path}/jobs.db", hooks=[Hook()])
    try:
        assert app.task(double).enqueue(1).info().status == "queued"
    finally:
        app.close()


async def test_after_run_tells_a_cancelled_or_put_back_job_from_a_success_returning_none(
    url: str,
) -> None:
    outcomes: list[tuple[str, Any, BaseException | None]] = []
    settled = asyncio.Event()

    class Outcomes(Hook):
        def after_run(
            self, worker: Worker, job: JobRecord, result: Any, error: BaseException | None
        ) -> None:
            outcomes.append((job.id, result, error))
            settled.set()

    app = Afterwork(url, hooks=[Outcomes()])

    async def next_outcome() -> tuple[str, Any, BaseException | None]:
        await asyncio.wait_for(settled.wait(), 5)
        settled.clear()
        return outcomes[-1]

    async def started(task: Any) -> str:
        global hanging
        hanging = asyncio.Event()
        handle = await task.aenqueue()
        await asyncio.wait_for(hanging.wait(), 5)
        return str(handle.id)

    try:
        worker = app.worker(heartbeat=0.05, lease=2.0, block=0.05)
        running = asyncio.create_task(worker.run())
        done = await app.task(returns_nothing).aenqueue()
        assert await next_outcome() == (done.id, None, None)

        cancelled = await started(app.task(hangs))
        await app.job(cancelled).acancel()
        job_id, result, error = await next_outcome()
        assert (job_id, result) == (cancelled, None)
        assert isinstance(error, asyncio.CancelledError)
        assert str(error) == "cancelled"

        put_back = await started(app.task(hangs))
        worker.stop(immediately=True)
        job_id, result, error = await next_outcome()
        assert (job_id, result) == (put_back, None)
        assert isinstance(error, asyncio.CancelledError)
        assert str(error) == "shutdown"
        await asyncio.wait_for(running, 5)
        assert (await app.job(put_back).astatus()) == "queued"
    finally:
        await app.aclose()


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def read_request_id() -> str:
    return request_id.get()


async def aread_request_id() -> str:
    return request_id.get()


class SetsRequestId(Hook):
    def before_run(self, worker: Worker, job: JobRecord) -> None:
        request_id.set(f"req-{job.id[-4:]}")


@pytest.mark.parametrize("func", [read_request_id, aread_request_id], ids=["sync", "async"])
async def test_a_context_variable_set_in_before_run_reaches_the_task(
    tmp_path: Path, func: Any
) -> None:
    app = Afterwork(f"sqlite:///{tmp_path}/jobs.db", hooks=[SetsRequestId()])
    try:
        handle = await app.task(func).aenqueue()
        await run_burst(app)
        assert await handle.aresult(timeout=5) == f"req-{handle.id[-4:]}"
    finally:
        await app.aclose()
