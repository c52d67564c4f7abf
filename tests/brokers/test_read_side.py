"""What handles, the CLI and the dashboard read and do: stats, listings, the
dead-letter queue, the worker registry and waiting for a job to finish."""

from __future__ import annotations

import asyncio

from afterwork.brokers import Broker, Outcome, OutcomeKind, WorkerInfo
from afterwork.clock import ManualClock
from afterwork.job import ErrorInfo, JobStatus

BOOM = ErrorInfo("ValueError", "boom")


def outcome(job, kind: OutcomeKind, worker: str = "w1", **fields) -> Outcome:
    return Outcome(job_id=job.id, worker=worker, kind=kind, **fields)


async def dead_letters(broker: Broker, make_job, claim, count: int, **options) -> list:
    jobs = [make_job(**options) for _ in range(count)]
    await broker.enqueue(jobs)
    for job in await claim(count, queues=(jobs[0].queue,)):
        await broker.settle([outcome(job, OutcomeKind.FAILED, error=BOOM)])
    return jobs


# -- stats ----------------------------------------------------------------------------


async def test_stats_are_empty_without_jobs(broker: Broker):
    assert await broker.stats() == {}


async def test_stats_count_jobs_per_queue_per_status(
    broker: Broker, clock: ManualClock, make_job, claim
):
    ok, failed, retried, running = (make_job() for _ in range(4))
    await broker.enqueue([ok, failed, retried, running])
    await claim()
    await broker.settle(
        [
            outcome(ok, OutcomeKind.SUCCEEDED),
            outcome(failed, OutcomeKind.FAILED, error=BOOM),
            outcome(retried, OutcomeKind.RETRY, retry_at=clock.now() + 60),
        ]
    )
    cancelled = make_job()
    await broker.enqueue([cancelled, make_job(), make_job(delay=30), make_job(queue="emails")])
    await broker.cancel(cancelled.id)

    assert await broker.stats() == {
        "default": {
            "succeeded": 1,
            "failed": 1,
            "retrying": 1,
            "running": 1,
            "cancelled": 1,
            "queued": 1,
            "scheduled": 1,
        },
        "emails": {"queued": 1},
    }


async def test_stats_count_due_scheduled_and_retrying_jobs_as_queued(
    broker: Broker, clock: ManualClock, make_job, claim
):
    retried = make_job()
    await broker.enqueue([retried])
    await claim()
    await broker.settle([outcome(retried, OutcomeKind.RETRY, retry_at=clock.now() + 60)])
    await broker.enqueue([make_job(delay=30)])

    clock.advance(60)

    assert await broker.stats() == {"default": {"queued": 2}}


# -- list_jobs ------------------------------------------------------------------------


async def test_waiting_jobs_are_listed_in_the_order_they_will_run(
    broker: Broker, clock: ManualClock, make_job
):
    late = make_job(delay=50)
    low, urgent, normal = make_job(priority=-5), make_job(priority=10), make_job()
    early = make_job(delay=20)
    await broker.enqueue([late, low, urgent, normal, early])

    queued = await broker.list_jobs(status=JobStatus.QUEUED)
    scheduled = await broker.list_jobs(status=JobStatus.SCHEDULED)

    assert [j.id for j in queued] == [urgent.id, normal.id, low.id]
    assert [j.id for j in scheduled] == [early.id, late.id]
    clock.advance(20)
    queued = await broker.list_jobs(status=JobStatus.QUEUED)
    assert [j.id for j in queued] == [urgent.id, normal.id, early.id, low.id]
    assert [j.id for j in await broker.list_jobs(status=JobStatus.SCHEDULED)] == [late.id]


async def test_finished_jobs_are_listed_newest_first(
    broker: Broker, clock: ManualClock, make_job, claim
):
    first, second, third = make_job(), make_job(), make_job()
    await broker.enqueue([first, second, third])
    await claim()
    for job in (second, third, first):
        clock.advance(1)
        await broker.settle([outcome(job, OutcomeKind.SUCCEEDED)])

    listed = await broker.list_jobs(status=JobStatus.SUCCEEDED)

    assert [j.id for j in listed] == [first.id, third.id, second.id]


async def test_list_jobs_filters_by_status_and_queue(broker: Broker, make_job, claim):
    mail = [make_job(queue="mail") for _ in range(3)]
    default = [make_job() for _ in range(2)]
    await broker.enqueue(mail + default)
    await claim(1, queues=("mail",))

    by_queue = await broker.list_jobs(queue="mail")
    running = await broker.list_jobs(status=JobStatus.RUNNING)
    queued_mail = await broker.list_jobs(status=JobStatus.QUEUED, queue="mail")

    assert sorted(j.id for j in by_queue) == sorted(j.id for j in mail)
    assert [j.id for j in running] == [mail[0].id]
    assert [j.id for j in queued_mail] == [mail[1].id, mail[2].id]
    assert len(await broker.list_jobs()) == 5
    assert await broker.list_jobs(status=JobStatus.FAILED) == []
    assert await broker.list_jobs(queue="nowhere") == []


async def test_list_jobs_returns_at_most_limit_jobs(broker: Broker, make_job):
    jobs = [make_job() for _ in range(10)]
    await broker.enqueue(jobs)

    assert [j.id for j in await broker.list_jobs(status=JobStatus.QUEUED, limit=3)] == [
        j.id for j in jobs[:3]
    ]
    assert len(await broker.list_jobs(limit=4)) == 4


async def test_a_retrying_job_is_listed_as_retrying_until_its_time_comes(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job = make_job()
    await broker.enqueue([job])
    await claim()
    await broker.settle([outcome(job, OutcomeKind.RETRY, retry_at=clock.now() + 5)])

    assert [j.id for j in await broker.list_jobs(status=JobStatus.RETRYING)] == [job.id]
    assert await broker.list_jobs(status=JobStatus.QUEUED) == []
    clock.advance(5)
    assert await broker.list_jobs(status=JobStatus.RETRYING) == []
    assert [j.id for j in await broker.list_jobs(status=JobStatus.QUEUED)] == [job.id]


# -- retry_failed and purge -----------------------------------------------------------


async def test_retry_failed_queues_the_given_dead_letters_again_with_fresh_attempts(
    broker: Broker, clock: ManualClock, make_job, claim
):
    retried, left = await dead_letters(broker, make_job, claim, 2, max_attempts=1)
    clock.advance(10)

    assert await broker.retry_failed([retried.id]) == 1

    record = await broker.get(retried.id)
    assert record.status == JobStatus.QUEUED
    assert record.attempts == 0
    assert record.finished_at is None
    assert record.expires_at is None
    assert (await broker.get(left.id)).status == JobStatus.FAILED
    [again] = await claim(lease=10 * broker.dead_letter_ttl)
    assert again.id == retried.id
    assert again.attempts == 1
    clock.advance(broker.dead_letter_ttl)
    await broker.recover()  # its old dead-letter expiry no longer applies
    assert (await broker.get(retried.id)).status == JobStatus.RUNNING


async def test_retry_failed_without_ids_queues_every_dead_letter(broker: Broker, make_job, claim):
    jobs = await dead_letters(broker, make_job, claim, 3)
    jobs += await dead_letters(broker, make_job, claim, 2, queue="mail")

    assert await broker.retry_failed() == 5

    assert await broker.list_jobs(status=JobStatus.FAILED) == []
    claimed = await claim(queues=("default", "mail"))
    assert sorted(j.id for j in claimed) == sorted(j.id for j in jobs)


async def test_retry_failed_ignores_jobs_that_are_not_dead_letters(broker: Broker, make_job, claim):
    waiting, running, done = make_job(), make_job(), make_job()
    await broker.enqueue([running, done])
    await claim()
    await broker.settle([outcome(done, OutcomeKind.SUCCEEDED)])
    await broker.enqueue([waiting])
    [dead] = await dead_letters(broker, make_job, claim, 1)

    ids = [waiting.id, running.id, done.id, "no-such-job", dead.id, dead.id]
    assert await broker.retry_failed(ids) == 1

    assert (await broker.get(running.id)).attempts == 1
    assert (await broker.get(done.id)).status == JobStatus.SUCCEEDED
    assert [j.id for j in await claim()] == [waiting.id, dead.id]


async def test_retry_failed_skips_a_dead_letter_whose_unique_key_is_active_again(
    broker: Broker, make_job, claim
):
    [dead] = await dead_letters(broker, make_job, claim, 1, unique_key="nightly")
    replacement = make_job(unique_key="nightly")
    await broker.enqueue([replacement])

    assert await broker.retry_failed([dead.id]) == 0

    assert (await broker.get(dead.id)).status == JobStatus.FAILED
    assert [j.id for j in await claim()] == [replacement.id]


async def test_a_retried_dead_letter_holds_its_unique_key_again(broker: Broker, make_job, claim):
    [dead] = await dead_letters(broker, make_job, claim, 1, unique_key="nightly")

    await broker.retry_failed([dead.id])

    [stored] = await broker.enqueue([make_job(unique_key="nightly")])
    assert stored.id == dead.id


async def test_a_retried_dead_letter_forgets_an_old_cancel_request(broker: Broker, make_job, claim):
    job = make_job()
    await broker.enqueue([job])
    await claim(worker="w1")
    await broker.cancel(job.id)
    await broker.settle([outcome(job, OutcomeKind.FAILED, error=BOOM)])

    await broker.retry_failed([job.id])
    await claim(worker="w2")

    assert not (await broker.get(job.id)).cancel_requested
    assert await broker.extend("w2", [job.id], 30) == []


async def test_purge_deletes_the_given_dead_letters(broker: Broker, make_job, claim):
    purged, kept = await dead_letters(broker, make_job, claim, 2)
    waiting = make_job()
    await broker.enqueue([waiting])

    assert await broker.purge([purged.id, purged.id, waiting.id, "no-such-job"]) == 1

    assert await broker.get(purged.id) is None
    assert (await broker.get(kept.id)).status == JobStatus.FAILED
    assert (await broker.get(waiting.id)).status == JobStatus.QUEUED


async def test_purge_without_ids_deletes_every_dead_letter(
    broker: Broker, clock: ManualClock, make_job, claim
):
    dead = await dead_letters(broker, make_job, claim, 3)
    done, waiting = make_job(), make_job()
    await broker.enqueue([done])
    await claim()
    await broker.settle([outcome(done, OutcomeKind.SUCCEEDED)])
    await broker.enqueue([waiting])

    assert await broker.purge() == 3

    assert all([await broker.get(j.id) is None for j in dead])
    assert await broker.list_jobs(status=JobStatus.FAILED) == []
    assert await broker.stats() == {"default": {"succeeded": 1, "queued": 1}}
    assert await broker.purge() == 0
    assert await broker.purge([]) == 0
    assert await broker.retry_failed([]) == 0


# -- the worker registry --------------------------------------------------------------


def worker_info(worker_id: str, last_seen: float, **fields) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id,
        hostname="host-1",
        pid=1234,
        queues=["high", "default"],
        concurrency=10,
        started_at=last_seen,
        last_seen=last_seen,
        **fields,
    )


async def test_registered_workers_are_listed_while_they_were_seen_recently(
    broker: Broker, clock: ManualClock
):
    await broker.register_worker(worker_info("w1", clock.now()))
    clock.advance(5)
    await broker.register_worker(worker_info("w2", clock.now(), running=3, processed=7))

    workers = sorted(await broker.workers(alive_within=10), key=lambda w: w.id)
    assert [w.id for w in workers] == ["w1", "w2"]
    assert workers[1] == worker_info("w2", clock.now(), running=3, processed=7)
    clock.advance(6)
    assert [w.id for w in await broker.workers(alive_within=10)] == ["w2"]
    clock.advance(10)
    assert await broker.workers(alive_within=10) == []


async def test_a_heartbeat_refreshes_a_registered_worker(broker: Broker, clock: ManualClock):
    await broker.register_worker(worker_info("w1", clock.now()))
    clock.advance(30)

    await broker.register_worker(worker_info("w1", clock.now(), processed=5))

    [worker] = await broker.workers(alive_within=10)
    assert worker.last_seen == clock.now()
    assert worker.processed == 5


async def test_an_unregistered_worker_is_no_longer_listed(broker: Broker, clock: ManualClock):
    await broker.register_worker(worker_info("w1", clock.now()))
    await broker.register_worker(worker_info("w2", clock.now()))

    await broker.unregister_worker("w1")
    await broker.unregister_worker("never-registered")

    assert [w.id for w in await broker.workers(alive_within=10)] == ["w2"]


# -- wait -----------------------------------------------------------------------------


async def test_wait_returns_once_another_task_settles_the_job(broker: Broker, make_job, claim):
    job = make_job()
    await broker.enqueue([job])
    await claim(worker="w1")
    waiter = asyncio.create_task(broker.wait(job.id, timeout=10))
    done, _ = await asyncio.wait({waiter}, timeout=0.05)
    assert not done

    await broker.settle([outcome(job, OutcomeKind.SUCCEEDED, result=b"42")])

    record = await asyncio.wait_for(waiter, timeout=2)
    assert record.status == JobStatus.SUCCEEDED
    assert record.result == b"42"


async def test_wait_returns_once_the_job_is_cancelled(broker: Broker, make_job):
    job = make_job(delay=60)
    await broker.enqueue([job])
    waiter = asyncio.create_task(broker.wait(job.id, timeout=10))

    await broker.cancel(job.id)

    record = await asyncio.wait_for(waiter, timeout=2)
    assert record.status == JobStatus.CANCELLED


async def test_wait_returns_the_running_job_when_it_times_out(broker: Broker, make_job, claim):
    job = make_job()
    await broker.enqueue([job])
    await claim(worker="w1")

    loop = asyncio.get_running_loop()
    started = loop.time()
    record = await asyncio.wait_for(broker.wait(job.id, timeout=0.2), timeout=2)

    assert loop.time() - started >= 0.19
    assert record.status == JobStatus.RUNNING
    assert record.worker == "w1"


async def test_wait_returns_a_finished_job_at_once(broker: Broker, make_job, claim):
    job = make_job()
    await broker.enqueue([job])
    await claim()
    await broker.settle([outcome(job, OutcomeKind.FAILED, error=BOOM)])

    record = await asyncio.wait_for(broker.wait(job.id, timeout=None), timeout=1)

    assert record.status == JobStatus.FAILED
    assert record.error == BOOM


async def test_wait_returns_none_for_an_unknown_job(broker: Broker):
    assert await asyncio.wait_for(broker.wait("no-such-job", timeout=5), timeout=1) is None


# -- ids by their first digits -------------------------------------------------------


async def test_ids_starting_with_finds_jobs_in_every_state_and_queue(
    broker: Broker, make_job, claim
):
    waiting, running, failed = make_job(), make_job(queue="other"), make_job(queue="third")
    await broker.enqueue([waiting, running, failed])
    await claim(1, queues=("other",))
    [claimed] = await claim(1, queues=("third",))
    await broker.settle([outcome(claimed, OutcomeKind.FAILED, error=BOOM)])
    every = sorted([waiting.id, running.id, failed.id])
    shared = waiting.id[: len(waiting.id) - 2]  # the ids differ only in their last digit

    for job in (waiting, running, failed):
        assert await broker.ids_starting_with(job.id, 5) == [job.id]
    assert await broker.ids_starting_with(shared, 5) == every
    assert await broker.ids_starting_with(shared, 2) == every[:2]
    assert await broker.ids_starting_with("zz", 2) == []
    assert await broker.ids_starting_with("*", 2) == []
