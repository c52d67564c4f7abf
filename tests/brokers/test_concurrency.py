"""Workers racing for the same jobs, and ``reserve`` blocking until work arrives.

Races run as asyncio tasks on one broker, as separate broker instances on one
store (separate connections), and as separate OS processes. Blocking tests use
the real clock, since they are about how long ``reserve`` waits.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from afterwork.brokers import Broker, Outcome, OutcomeKind
from afterwork.clock import Clock
from afterwork.job import JobStatus

JOBS = 300
HELPER = Path(__file__).with_name("broker_process.py")
#: Upper bound for anything that should take milliseconds; generous for slow CI.
PATIENCE = 10.0


async def drain(broker: Broker, worker: str, limit: int) -> list[str]:
    claimed: list[str] = []
    while jobs := await broker.reserve(["default"], limit, worker=worker, lease=300):
        claimed.extend(job.id for job in jobs)
    return claimed


async def assert_each_job_claimed_once(broker: Broker, enqueued, claims: dict[str, list[str]]):
    every = [job_id for ids in claims.values() for job_id in ids]
    assert len(every) == len(set(every)), "a job was claimed twice"
    assert sorted(every) == sorted(job.id for job in enqueued)
    for worker, ids in claims.items():
        for job_id in ids:
            record = await broker.get(job_id)
            assert (record.status, record.worker, record.attempts) == (
                JobStatus.RUNNING,
                worker,
                1,
            )


def durable_only(broker: Broker) -> None:
    if not broker.durable:
        pytest.skip(f"{type(broker).__name__} keeps jobs in one process's memory")


async def test_concurrent_tasks_never_claim_the_same_job_twice(broker: Broker, make_job):
    jobs = [make_job() for _ in range(JOBS)]
    await broker.enqueue(jobs)
    workers = [f"w{i}" for i in range(4)]

    results = await asyncio.wait_for(
        asyncio.gather(*(drain(broker, w, limit=7) for w in workers)), PATIENCE
    )

    await assert_each_job_claimed_once(broker, jobs, dict(zip(workers, results, strict=True)))


async def test_workers_on_separate_threads_never_claim_the_same_job_twice(broker: Broker, make_job):
    jobs = [make_job() for _ in range(JOBS)]
    await broker.enqueue(jobs)
    workers = [f"t{i}" for i in range(3)]

    results = await asyncio.wait_for(
        asyncio.gather(*(asyncio.to_thread(asyncio.run, drain(broker, w, 5)) for w in workers)),
        PATIENCE,
    )

    await assert_each_job_claimed_once(broker, jobs, dict(zip(workers, results, strict=True)))


async def test_workers_on_separate_connections_never_claim_the_same_job_twice(
    broker: Broker, make_broker, make_job
):
    durable_only(broker)
    jobs = [make_job() for _ in range(JOBS)]
    await broker.enqueue(jobs)
    brokers = [broker, *[await make_broker() for _ in range(3)]]
    workers = [f"w{i}" for i in range(len(brokers))]

    results = await asyncio.wait_for(
        asyncio.gather(*(drain(b, w, limit=5) for b, w in zip(brokers, workers, strict=True))),
        PATIENCE,
    )

    await assert_each_job_claimed_once(broker, jobs, dict(zip(workers, results, strict=True)))


async def test_workers_in_separate_processes_never_claim_the_same_job_twice(
    broker: Broker, broker_url: str, make_job
):
    durable_only(broker)
    jobs = [make_job() for _ in range(JOBS)]
    await broker.enqueue(jobs)
    workers = [f"p{i}" for i in range(3)]
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(HELPER),
            *("claim", broker_url, "default", worker, "5"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for worker in workers
    ]
    try:
        for process in processes:  # all connected before any starts claiming
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 3 * PATIENCE)
            assert line.strip() == b"ready"
        outputs = await asyncio.wait_for(
            asyncio.gather(*(p.communicate(b"go\n") for p in processes)), 3 * PATIENCE
        )
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()

    assert [p.returncode for p in processes] == [0] * len(processes)
    results = [json.loads(stdout) for stdout, _ in outputs]
    await assert_each_job_claimed_once(broker, jobs, dict(zip(workers, results, strict=True)))


# -- blocking reserve -----------------------------------------------------------------


async def blocked_reserve(broker: Broker, block: float, queues=("default",)) -> asyncio.Task:
    """Start a blocking reserve and make sure it is waiting, not returning."""
    task = asyncio.create_task(broker.reserve(list(queues), 1, worker="w1", lease=30, block=block))
    done, _ = await asyncio.wait({task}, timeout=0.1)
    assert not done, "reserve returned although nothing was ready"
    return task


async def test_a_blocked_reserve_returns_as_soon_as_a_job_is_enqueued(make_broker, make_job):
    broker = await make_broker(clock=Clock())
    job = make_job(clock=broker.clock)
    loop = asyncio.get_running_loop()
    task = await blocked_reserve(broker, block=5)

    started = loop.time()
    await broker.enqueue([job])
    claimed = await asyncio.wait_for(task, PATIENCE)

    assert [j.id for j in claimed] == [job.id]
    assert loop.time() - started < 1.0


async def test_a_blocked_reserve_returns_nothing_after_its_block_time(make_broker):
    broker = await make_broker(clock=Clock())
    loop = asyncio.get_running_loop()

    started = loop.time()
    claimed = await asyncio.wait_for(
        broker.reserve(["default"], 1, worker="w1", lease=30, block=0.2), PATIENCE
    )

    assert claimed == []
    assert 0.19 <= loop.time() - started < 2.0


async def test_a_blocked_reserve_ignores_work_in_queues_it_does_not_serve(make_broker, make_job):
    broker = await make_broker(clock=Clock())
    task = await blocked_reserve(broker, block=0.4)

    await broker.enqueue([make_job(clock=broker.clock, queue="other")])

    assert await asyncio.wait_for(task, PATIENCE) == []
    assert (await broker.stats()) == {"other": {"queued": 1}}


async def test_a_blocked_reserve_wakes_when_a_delayed_job_becomes_due(make_broker, make_job):
    broker = await make_broker(clock=Clock())
    job = make_job(clock=broker.clock, delay=0.3)
    await broker.enqueue([job])
    loop = asyncio.get_running_loop()

    started = loop.time()
    claimed = await asyncio.wait_for(
        broker.reserve(["default"], 1, worker="w1", lease=30, block=5), PATIENCE
    )

    assert [j.id for j in claimed] == [job.id]
    assert 0.25 <= loop.time() - started < 2.0


async def test_a_blocked_reserve_wakes_when_a_job_is_put_back(make_broker, make_job):
    broker = await make_broker(clock=Clock())
    job = make_job(clock=broker.clock)
    await broker.enqueue([job])
    await broker.reserve(["default"], 1, worker="w0", lease=30)
    task = await blocked_reserve(broker, block=5)

    await broker.settle([Outcome(job_id=job.id, worker="w0", kind=OutcomeKind.REQUEUE)])

    assert [j.id for j in await asyncio.wait_for(task, PATIENCE)] == [job.id]


async def test_wake_makes_a_blocked_reserve_return_at_once(make_broker):
    broker = await make_broker(clock=Clock())
    loop = asyncio.get_running_loop()
    task = await blocked_reserve(broker, block=3 * PATIENCE)

    started = loop.time()
    await asyncio.to_thread(broker.wake)  # as a worker stopped from a signal handler would

    assert await asyncio.wait_for(task, PATIENCE) == []
    assert loop.time() - started < 1.0


async def test_a_blocked_reserve_wakes_for_a_job_enqueued_from_another_thread(
    make_broker, make_job
):
    broker = await make_broker(clock=Clock())
    job = make_job(clock=broker.clock)
    task = await blocked_reserve(broker, block=5)

    await asyncio.to_thread(asyncio.run, broker.enqueue([job]))

    assert [j.id for j in await asyncio.wait_for(task, PATIENCE)] == [job.id]


async def test_wait_returns_once_the_job_is_settled_from_another_thread(broker, make_job):
    job = make_job()
    await broker.enqueue([job])
    await broker.reserve(["default"], 1, worker="w1", lease=30)
    waiter = asyncio.create_task(broker.wait(job.id, timeout=5))
    done, _ = await asyncio.wait({waiter}, timeout=0.05)
    assert not done
    loop = asyncio.get_running_loop()

    started = loop.time()
    settled = Outcome(job_id=job.id, worker="w1", kind=OutcomeKind.SUCCEEDED, result=b"1")
    await asyncio.to_thread(asyncio.run, broker.settle([settled]))

    record = await asyncio.wait_for(waiter, PATIENCE)
    assert record.status == JobStatus.SUCCEEDED
    assert loop.time() - started < 0.5


async def test_a_blocked_reserve_wakes_for_a_job_enqueued_on_another_connection(
    make_broker, make_job
):
    broker = await make_broker(clock=Clock())
    durable_only(broker)
    producer = await make_broker(clock=Clock())
    job = make_job(clock=broker.clock)
    task = await blocked_reserve(broker, block=5)

    await producer.enqueue([job])

    assert [j.id for j in await asyncio.wait_for(task, PATIENCE)] == [job.id]


async def test_a_blocked_reserve_wakes_for_a_job_enqueued_by_another_process(
    make_broker, broker_url: str
):
    broker = await make_broker(clock=Clock())
    durable_only(broker)
    task = await blocked_reserve(broker, block=3 * PATIENCE)

    producer = await asyncio.create_subprocess_exec(
        sys.executable, str(HELPER), "enqueue", broker_url, "default", "from-afar"
    )
    assert await asyncio.wait_for(producer.wait(), 3 * PATIENCE) == 0
    loop = asyncio.get_running_loop()
    enqueued = loop.time()
    claimed = await asyncio.wait_for(task, PATIENCE)

    assert [j.id for j in claimed] == ["from-afar"]
    assert loop.time() - enqueued < 1.0
