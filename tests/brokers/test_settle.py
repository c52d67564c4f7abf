"""What each outcome a worker reports does to its job, and who may report it."""

from __future__ import annotations

from afterwork.brokers import Broker, Outcome, OutcomeKind
from afterwork.clock import ManualClock
from afterwork.job import ErrorInfo, JobStatus

BOOM = ErrorInfo("ValueError", "boom", "Traceback ...")


def outcome(job, kind: OutcomeKind, worker: str = "w1", **fields) -> Outcome:
    return Outcome(job_id=job.id, worker=worker, kind=kind, **fields)


async def test_a_succeeded_job_keeps_its_result(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job = make_job()
    await broker.enqueue([job])
    await claim()
    clock.advance(2)

    await broker.settle([outcome(job, OutcomeKind.SUCCEEDED, result=b'{"value": 42}')])

    record = await broker.get(job.id)
    assert record.status == JobStatus.SUCCEEDED
    assert record.result == b'{"value": 42}'
    assert record.error is None
    assert record.finished_at == clock.now()
    assert record.attempts == 1
    assert record.worker == "w1"  # who ran the last attempt
    assert record.lease_until is None
    assert await claim() == []


async def test_a_retried_job_waits_until_its_retry_time_and_keeps_its_error(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job = make_job()
    await broker.enqueue([job])
    await claim()

    await broker.settle([outcome(job, OutcomeKind.RETRY, error=BOOM, retry_at=clock.now() + 10)])

    record = await broker.get(job.id)
    assert record.status == JobStatus.RETRYING
    assert record.status_at(clock.now()) == JobStatus.RETRYING
    assert record.error == BOOM
    assert record.worker is None
    assert record.finished_at is None
    assert await claim() == []
    clock.advance(10)
    assert (await broker.get(job.id)).status_at(clock.now()) == JobStatus.QUEUED
    [again] = await claim(worker="w2")
    assert again.id == job.id
    assert again.attempts == 2
    assert again.error == BOOM


async def test_a_retry_without_a_time_is_claimable_at_once(broker: Broker, make_job, claim):
    job = make_job()
    await broker.enqueue([job])
    await claim()

    await broker.settle([outcome(job, OutcomeKind.RETRY, error=BOOM)])

    assert [j.id for j in await claim()] == [job.id]


async def test_a_failed_job_goes_to_the_dead_letter_queue(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job, other = make_job(), make_job()
    await broker.enqueue([job, other])
    await claim(1)

    await broker.settle([outcome(job, OutcomeKind.FAILED, error=BOOM)])

    record = await broker.get(job.id)
    assert record.status == JobStatus.FAILED
    assert record.error == BOOM
    assert record.finished_at == clock.now()
    assert record.worker == "w1"  # who ran the last attempt
    assert [j.id for j in await broker.list_jobs(status=JobStatus.FAILED)] == [job.id]
    assert [j.id for j in await claim()] == [other.id]


async def test_a_requeued_job_is_claimable_again_without_counting_the_attempt(
    broker: Broker, make_job, claim
):
    job = make_job()
    await broker.enqueue([job])
    await claim(worker="w1")

    await broker.settle([outcome(job, OutcomeKind.REQUEUE, worker="w1")])

    record = await broker.get(job.id)
    assert record.status == JobStatus.QUEUED
    assert record.attempts == 0
    assert record.worker is None
    [again] = await claim(worker="w2")
    assert again.attempts == 1


async def test_a_requeue_with_a_time_and_a_reason_waits_until_then_without_the_attempt(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job, other = make_job(), make_job()
    await broker.enqueue([job, other])
    await claim(1, worker="w1")
    reason = ErrorInfo("afterwork.errors.UnknownTask", "no task named 'x'", since=clock.now())

    await broker.settle(
        [outcome(job, OutcomeKind.REQUEUE, worker="w1", error=reason, retry_at=clock.now() + 5)]
    )

    record = await broker.get(job.id)
    assert record.status_at(clock.now()) == JobStatus.SCHEDULED
    assert (record.attempts, record.worker, record.error) == (0, None, reason)
    assert record.run_at == clock.now() + 5
    assert [j.id for j in await claim()] == [other.id]
    clock.advance(5)
    [again] = await claim(worker="w2")
    assert (again.id, again.attempts, again.error) == (job.id, 1, reason)


async def test_a_requeued_job_keeps_its_place_in_line(broker: Broker, make_job, claim):
    first, second = make_job(), make_job()
    await broker.enqueue([first, second])
    await claim(1)

    await broker.settle([outcome(first, OutcomeKind.REQUEUE)])

    assert [j.id for j in await claim()] == [first.id, second.id]


async def test_a_cancelled_outcome_finishes_the_job_as_cancelled(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job = make_job()
    await broker.enqueue([job])
    await claim()

    await broker.settle([outcome(job, OutcomeKind.CANCELLED)])

    record = await broker.get(job.id)
    assert record.status == JobStatus.CANCELLED
    assert record.finished_at == clock.now()
    assert await claim() == []


async def test_outcomes_settled_in_one_batch_each_apply(broker: Broker, make_job, claim):
    ok, failed, retried = make_job(), make_job(), make_job()
    await broker.enqueue([ok, failed, retried])
    await claim()

    await broker.settle(
        [
            outcome(ok, OutcomeKind.SUCCEEDED, result=b"1"),
            outcome(failed, OutcomeKind.FAILED, error=BOOM),
            outcome(retried, OutcomeKind.RETRY, error=BOOM),
        ]
    )

    statuses = [(await broker.get(j.id)).status for j in (ok, failed, retried)]
    assert statuses == [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.RETRYING]


async def test_an_outcome_from_a_worker_that_does_not_hold_the_lease_is_ignored(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job = make_job()
    await broker.enqueue([job])
    await claim(worker="w1", lease=30)
    clock.advance(31)
    await broker.recover()
    await claim(worker="w2", lease=30)

    for kind in OutcomeKind:
        await broker.settle([outcome(job, kind, worker="w1", result=b"stale", error=BOOM)])

    record = await broker.get(job.id)
    assert record.status == JobStatus.RUNNING
    assert record.worker == "w2"
    assert record.attempts == 2
    assert record.result is None
    await broker.settle([outcome(job, OutcomeKind.SUCCEEDED, worker="w2", result=b"fresh")])
    assert (await broker.get(job.id)).result == b"fresh"


async def test_an_outcome_for_a_job_that_is_not_running_is_ignored(broker: Broker, make_job, claim):
    waiting, done = make_job(), make_job()
    await broker.enqueue([done])
    await claim()
    await broker.settle([outcome(done, OutcomeKind.SUCCEEDED, result=b"first")])
    await broker.enqueue([waiting])

    await broker.settle(
        [
            outcome(waiting, OutcomeKind.FAILED, error=BOOM),
            outcome(done, OutcomeKind.FAILED, error=BOOM),
            Outcome(job_id="no-such-job", worker="w1", kind=OutcomeKind.SUCCEEDED),
        ]
    )

    assert (await broker.get(waiting.id)).status == JobStatus.QUEUED
    record = await broker.get(done.id)
    assert record.status == JobStatus.SUCCEEDED
    assert record.result == b"first"


# -- unique keys ----------------------------------------------------------------------


async def test_enqueueing_an_active_unique_key_returns_the_existing_job(
    broker: Broker, make_job, claim
):
    first = make_job(unique_key="report:7")
    await broker.enqueue([first])

    [waiting_twin] = await broker.enqueue([make_job(unique_key="report:7")])
    await claim()
    [running_twin] = await broker.enqueue([make_job(unique_key="report:7")])

    assert waiting_twin.id == first.id
    assert running_twin.id == first.id
    assert running_twin.status == JobStatus.RUNNING
    assert (await broker.stats())["default"] == {"running": 1}


async def test_a_unique_key_repeated_in_one_batch_is_stored_once(broker: Broker, make_job):
    a, b, c = make_job(unique_key="k"), make_job(unique_key="k"), make_job()

    stored = await broker.enqueue([a, b, c])

    assert [j.id for j in stored] == [a.id, a.id, c.id]
    assert await broker.get(b.id) is None


async def test_a_batch_mixing_new_jobs_and_active_unique_keys_stores_only_the_new(
    broker: Broker, make_job
):
    old = make_job(unique_key="k1")
    await broker.enqueue([old])
    plain, twin, fresh = make_job(), make_job(unique_key="k1"), make_job(unique_key="k2")

    stored = await broker.enqueue([plain, twin, fresh])

    assert [j.id for j in stored] == [plain.id, old.id, fresh.id]
    assert await broker.get(twin.id) is None
    assert (await broker.stats())["default"] == {"queued": 3}


async def test_a_delayed_or_retrying_job_holds_its_unique_key(
    broker: Broker, clock: ManualClock, make_job, claim
):
    delayed = make_job(delay=60, unique_key="later")
    retried = make_job(unique_key="again")
    await broker.enqueue([retried])
    await claim()
    await broker.settle([outcome(retried, OutcomeKind.RETRY, retry_at=clock.now() + 60)])
    await broker.enqueue([delayed])

    stored = await broker.enqueue([make_job(unique_key="later"), make_job(unique_key="again")])

    assert [j.id for j in stored] == [delayed.id, retried.id]


async def test_a_unique_key_can_be_used_again_after_its_job_finished(
    broker: Broker, make_job, claim
):
    finished = []
    for kind in (OutcomeKind.SUCCEEDED, OutcomeKind.FAILED, OutcomeKind.CANCELLED):
        job = make_job(unique_key=f"key-{kind}")
        await broker.enqueue([job])
        await claim()
        await broker.settle([outcome(job, kind, error=BOOM)])
        finished.append(job)
    waiting = make_job(unique_key="key-waiting")
    await broker.enqueue([waiting])
    assert await broker.cancel(waiting.id)

    again = [make_job(unique_key=j.unique_key) for j in [*finished, waiting]]
    stored = await broker.enqueue(again)

    assert [j.id for j in stored] == [j.id for j in again]
    assert sorted(j.id for j in await claim()) == sorted(j.id for j in again)


# -- cancel ---------------------------------------------------------------------------


async def test_cancelling_a_waiting_job_finishes_it_and_it_is_never_claimed(
    broker: Broker, clock: ManualClock, make_job, claim
):
    queued, delayed = make_job(), make_job(delay=10)
    await broker.enqueue([queued, delayed])

    assert await broker.cancel(queued.id)
    assert await broker.cancel(delayed.id)

    clock.advance(20)
    assert await claim() == []
    for job in (queued, delayed):
        record = await broker.get(job.id)
        assert record.status == JobStatus.CANCELLED
        assert record.finished_at == clock.now() - 20


async def test_cancelling_a_retrying_job_stops_its_retries(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job = make_job()
    await broker.enqueue([job])
    await claim()
    await broker.settle([outcome(job, OutcomeKind.RETRY, retry_at=clock.now() + 5)])

    assert await broker.cancel(job.id)

    clock.advance(10)
    assert await claim() == []
    assert (await broker.get(job.id)).status == JobStatus.CANCELLED


async def test_cancelling_a_running_job_asks_its_worker_to_stop_through_extend(
    broker: Broker, make_job, claim
):
    job, other = make_job(), make_job()
    await broker.enqueue([job, other])
    await claim(worker="w1")

    assert await broker.cancel(job.id)

    record = await broker.get(job.id)
    assert record.status == JobStatus.RUNNING
    assert record.cancel_requested
    assert await broker.extend("w1", [job.id, other.id], 30) == [job.id]
    await broker.settle([outcome(job, OutcomeKind.CANCELLED)])
    assert (await broker.get(job.id)).status == JobStatus.CANCELLED


async def test_a_running_job_whose_cancel_was_requested_does_not_run_again(
    broker: Broker, clock: ManualClock, make_job, claim
):
    retried, requeued, lost = make_job(), make_job(), make_job()
    await broker.enqueue([retried, requeued, lost])
    await claim(worker="w1", lease=30)
    for job in (retried, requeued, lost):
        assert await broker.cancel(job.id)

    # The worker finished before it heard of the cancel, or died.
    await broker.settle(
        [outcome(retried, OutcomeKind.RETRY, error=BOOM), outcome(requeued, OutcomeKind.REQUEUE)]
    )
    clock.advance(31)
    await broker.recover()

    assert await claim(worker="w2") == []
    for job in (retried, requeued, lost):
        assert (await broker.get(job.id)).status == JobStatus.CANCELLED


async def test_a_cancelled_running_job_that_finished_anyway_keeps_its_outcome(
    broker: Broker, make_job, claim
):
    job = make_job()
    await broker.enqueue([job])
    await claim()
    await broker.cancel(job.id)

    await broker.settle([outcome(job, OutcomeKind.SUCCEEDED, result=b"done")])

    record = await broker.get(job.id)
    assert record.status == JobStatus.SUCCEEDED
    assert record.result == b"done"


async def test_cancelling_a_finished_or_unknown_job_returns_false(broker: Broker, make_job, claim):
    done, cancelled = make_job(), make_job()
    await broker.enqueue([done, cancelled])
    await claim(1)
    await broker.settle([outcome(done, OutcomeKind.SUCCEEDED)])
    await broker.cancel(cancelled.id)

    assert not await broker.cancel(done.id)
    assert not await broker.cancel(cancelled.id)
    assert not await broker.cancel("no-such-job")
    assert (await broker.get(done.id)).status == JobStatus.SUCCEEDED


# -- expiry ---------------------------------------------------------------------------


async def test_a_succeeded_job_disappears_after_its_result_ttl(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job = make_job(result_ttl=100)
    await broker.enqueue([job])
    await claim()
    await broker.settle([outcome(job, OutcomeKind.SUCCEEDED, result=b"1")])

    clock.advance(99)
    await broker.recover()
    assert (await broker.get(job.id)).result == b"1"
    clock.advance(1)
    await broker.recover()
    assert await broker.get(job.id) is None
    assert await broker.stats() == {}


async def test_a_cancelled_job_disappears_after_its_result_ttl(
    broker: Broker, clock: ManualClock, make_job
):
    job = make_job(result_ttl=100)
    await broker.enqueue([job])
    await broker.cancel(job.id)

    clock.advance(99)
    await broker.recover()
    assert await broker.get(job.id) is not None
    clock.advance(1)
    await broker.recover()
    assert await broker.get(job.id) is None


async def test_a_dead_letter_disappears_after_the_dead_letter_ttl(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job = make_job(result_ttl=100)
    await broker.enqueue([job])
    await claim()
    await broker.settle([outcome(job, OutcomeKind.FAILED, error=BOOM)])

    assert broker.dead_letter_ttl > 100
    clock.advance(broker.dead_letter_ttl - 1)
    await broker.recover()
    assert (await broker.get(job.id)).status == JobStatus.FAILED
    clock.advance(1)
    await broker.recover()
    assert await broker.get(job.id) is None
    assert await broker.list_jobs(status=JobStatus.FAILED) == []


async def test_a_job_lost_for_good_is_kept_as_a_dead_letter(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job = make_job(max_attempts=1, result_ttl=100)
    await broker.enqueue([job])
    await claim(lease=30)
    clock.advance(30)
    await broker.recover()

    clock.advance(broker.dead_letter_ttl - 1)
    await broker.recover()
    assert (await broker.get(job.id)).status == JobStatus.FAILED
    clock.advance(1)
    await broker.recover()
    assert await broker.get(job.id) is None


async def test_waiting_and_running_jobs_never_expire(
    broker: Broker, clock: ManualClock, make_job, claim
):
    running, waiting = make_job(result_ttl=1), make_job(result_ttl=1, delay=10**6)
    await broker.enqueue([running, waiting])
    await claim(lease=10**7)

    clock.advance(10**5)
    await broker.recover()

    assert (await broker.get(running.id)).status == JobStatus.RUNNING
    assert (await broker.get(waiting.id)).status == JobStatus.SCHEDULED
