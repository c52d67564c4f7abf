"""Which jobs ``reserve`` hands out, in what order, and what a claim does to them."""

from __future__ import annotations

import msgspec

from afterwork.brokers import Broker, Outcome, OutcomeKind
from afterwork.clock import ManualClock
from afterwork.job import JobStatus


async def test_nothing_is_claimed_from_an_empty_queue(claim):
    assert await claim() == []


async def test_jobs_of_equal_priority_are_claimed_in_enqueue_order(broker: Broker, make_job, claim):
    jobs = [make_job() for _ in range(5)]
    await broker.enqueue(jobs)

    first = await claim(2)
    rest = await claim(10)

    assert [j.id for j in first + rest] == [j.id for j in jobs]


async def test_jobs_enqueued_in_separate_calls_keep_their_order(broker: Broker, make_job, claim):
    jobs = [make_job() for _ in range(4)]
    for job in jobs:
        await broker.enqueue([job])

    assert [j.id for j in await claim()] == [j.id for j in jobs]


async def test_higher_priority_jobs_are_claimed_first(broker: Broker, make_job, claim):
    low, mid, high, mid2, top = (make_job(priority=p) for p in (-10, 0, 50, 0, 100))
    await broker.enqueue([low, mid, high, mid2, top])

    claimed = await claim()

    assert [j.id for j in claimed] == [top.id, high.id, mid.id, mid2.id, low.id]


async def test_due_jobs_of_equal_priority_run_in_run_at_order(
    broker: Broker, clock: ManualClock, make_job, claim
):
    later = make_job(delay=10)
    clock.advance(1)
    now = make_job()
    await broker.enqueue([later, now])
    clock.advance(20)

    assert [j.id for j in await claim()] == [now.id, later.id]


async def test_queues_are_served_in_the_order_the_worker_names_them(
    broker: Broker, make_job, claim
):
    urgent_default = make_job(queue="default", priority=100)
    low = make_job(queue="low", priority=100)
    high = [make_job(queue="high", priority=-100), make_job(queue="high")]
    await broker.enqueue([urgent_default, low, *high])

    claimed = await claim(queues=("high", "default", "low"))

    assert [j.id for j in claimed] == [high[1].id, high[0].id, urgent_default.id, low.id]


async def test_the_limit_caps_a_claim_across_queues(broker: Broker, make_job, claim):
    high = [make_job(queue="high") for _ in range(2)]
    default = [make_job() for _ in range(3)]
    await broker.enqueue(high + default)

    first = await claim(3, queues=("high", "default"))
    second = await claim(3, queues=("high", "default"))

    assert [j.id for j in first] == [high[0].id, high[1].id, default[0].id]
    assert [j.id for j in second] == [default[1].id, default[2].id]


async def test_a_job_in_a_queue_the_worker_does_not_name_is_never_claimed(
    broker: Broker, make_job, claim
):
    other = make_job(queue="other", priority=100)
    mine = make_job()
    await broker.enqueue([other, mine])

    assert [j.id for j in await claim()] == [mine.id]
    assert await claim(queues=("default", "high")) == []
    assert (await broker.get(other.id)).status == JobStatus.QUEUED


async def test_a_delayed_job_is_not_claimable_until_the_clock_reaches_its_run_at(
    broker: Broker, clock: ManualClock, make_job, claim
):
    delayed = make_job(delay=60)
    await broker.enqueue([delayed])

    assert await claim() == []
    clock.advance(59.5)
    assert await claim() == []
    clock.advance(0.5)
    assert [j.id for j in await claim()] == [delayed.id]


async def test_a_delayed_job_reports_scheduled_then_queued(
    broker: Broker, clock: ManualClock, make_job
):
    delayed = make_job(delay=60)
    await broker.enqueue([delayed])

    record = await broker.get(delayed.id)
    assert record.status_at(clock.now()) == JobStatus.SCHEDULED
    clock.advance(60)
    record = await broker.get(delayed.id)
    assert record.status_at(clock.now()) == JobStatus.QUEUED


async def test_a_ready_job_is_claimed_before_a_delayed_one_of_higher_priority(
    broker: Broker, clock: ManualClock, make_job, claim
):
    delayed = make_job(delay=30, priority=100)
    ready = make_job()
    await broker.enqueue([delayed, ready])

    assert [j.id for j in await claim()] == [ready.id]
    clock.advance(30)
    assert [j.id for j in await claim()] == [delayed.id]


async def test_claiming_counts_the_attempt_and_leases_the_job_to_the_worker(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job = make_job()
    await broker.enqueue([job])

    [claimed] = await claim(worker="w1", lease=30)

    for record in (claimed, await broker.get(job.id)):
        assert record.status == JobStatus.RUNNING
        assert record.attempts == 1
        assert record.worker == "w1"
        assert record.started_at == clock.now()
        assert record.lease_until == clock.now() + 30
        assert record.payload == job.payload
        assert record.task == job.task


async def test_a_claimed_job_is_not_claimed_again_while_its_lease_lives(
    broker: Broker, clock: ManualClock, make_job, claim
):
    await broker.enqueue([make_job()])
    await claim(worker="w1", lease=30)

    clock.advance(29.9)
    assert await broker.recover() == 0
    assert await claim(worker="w2") == []


async def test_extend_renews_the_lease_of_the_worker_that_holds_it(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job = make_job()
    await broker.enqueue([job])
    await claim(worker="w1", lease=30)

    clock.advance(25)
    assert await broker.extend("w1", [job.id], 30) == []
    assert (await broker.get(job.id)).lease_until == clock.now() + 30
    clock.advance(25)  # past the first lease, inside the renewed one

    assert await broker.recover() == 0
    assert await claim(worker="w2") == []
    assert (await broker.get(job.id)).worker == "w1"


async def test_extend_reports_jobs_the_worker_does_not_hold(broker: Broker, make_job, claim):
    mine, theirs, waiting = make_job(), make_job(), make_job()
    await broker.enqueue([mine, theirs])
    await claim(1, worker="w1")
    await claim(1, worker="w2")
    await broker.enqueue([waiting])

    lost = await broker.extend("w1", [mine.id, theirs.id, waiting.id, "no-such-job"], 30)

    assert sorted(lost) == sorted([theirs.id, waiting.id, "no-such-job"])
    assert await broker.extend("w1", [], 30) == []


async def test_an_expired_lease_returns_the_job_to_its_queue_for_another_worker(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job = make_job()
    await broker.enqueue([job])
    await claim(worker="w1", lease=30)

    clock.advance(30)
    assert await broker.recover() == 1

    record = await broker.get(job.id)
    assert record.status == JobStatus.QUEUED
    assert record.worker is None
    assert record.lease_until is None
    [again] = await claim(worker="w2")
    assert again.id == job.id
    assert again.worker == "w2"
    assert again.attempts == 2
    assert await broker.extend("w1", [job.id], 30) == [job.id]


async def test_a_job_whose_attempts_are_spent_when_its_lease_expires_is_dead_lettered(
    broker: Broker, clock: ManualClock, make_job, claim
):
    job = make_job(max_attempts=2)
    await broker.enqueue([job])
    await claim(worker="w1", lease=30)
    clock.advance(31)
    await broker.recover()
    await claim(worker="w2", lease=30)
    clock.advance(31)

    assert await broker.recover() == 1

    record = await broker.get(job.id)
    assert record.status == JobStatus.FAILED
    assert record.error is not None
    assert record.error.type == "afterwork.errors.WorkerLost"
    assert "w2" in record.error.message
    assert record.finished_at == clock.now()
    assert record.worker == "w2"  # the worker that was lost, for the record
    assert [j.id for j in await broker.list_jobs(status=JobStatus.FAILED)] == [job.id]
    assert await claim(worker="w3") == []


async def test_recover_leaves_waiting_and_finished_jobs_alone(
    broker: Broker, clock: ManualClock, make_job, claim
):
    done, waiting = make_job(), make_job()
    await broker.enqueue([done])
    await claim(worker="w1")
    await broker.settle([Outcome(job_id=done.id, worker="w1", kind=OutcomeKind.SUCCEEDED)])
    await broker.enqueue([waiting])
    clock.advance(100)

    assert await broker.recover() == 0
    assert (await broker.get(done.id)).status == JobStatus.SUCCEEDED
    assert (await broker.get(waiting.id)).status == JobStatus.QUEUED


async def test_a_batch_of_a_thousand_jobs_is_claimable_in_full(broker: Broker, make_job, claim):
    jobs = [make_job(priority=i % 3) for i in range(1000)]

    stored = await broker.enqueue(jobs)
    assert [j.id for j in stored] == [j.id for j in jobs]

    claimed = []
    while batch := await claim(300):
        claimed.extend(batch)
    assert sorted(j.id for j in claimed) == sorted(j.id for j in jobs)
    assert [j.priority for j in claimed] == sorted((j.priority for j in jobs), reverse=True)
    assert (await broker.stats())["default"] == {"running": 1000}


async def test_a_stored_job_reads_back_exactly_as_it_was_enqueued(broker: Broker, make_job):
    job = msgspec.structs.replace(
        make_job(delay=12.5, unique_key="ü-key", priority=-7, queue="emails"),
        payload=bytes(range(256)),
        timeout=2.25,
        task="billing.charge_card",
    )

    [stored] = await broker.enqueue([job])

    assert stored == job
    assert await broker.get(job.id) == job
    assert await broker.get("no-such-job") is None


async def test_enqueueing_nothing_stores_nothing(broker: Broker):
    assert await broker.enqueue([]) == []
    assert await broker.stats() == {}


async def test_enqueueing_a_job_id_again_keeps_the_job_stored_first(
    broker: Broker, make_job, claim
):
    job = make_job()
    await broker.enqueue([job])
    [claimed] = await claim()
    resent = msgspec.structs.replace(job, priority=50)
    fresh = make_job()

    stored = await broker.enqueue([resent, fresh])

    assert [(j.id, j.priority) for j in stored] == [(job.id, 0), (fresh.id, 0)]
    assert stored[0].status == JobStatus.RUNNING
    assert (await broker.get(job.id)).worker == claimed.worker
    assert [j.id for j in await claim()] == [fresh.id]


async def test_records_handed_out_are_snapshots(broker: Broker, make_job, claim):
    job = make_job()
    [stored] = await broker.enqueue([job])
    stored.priority = 99
    job.status = JobStatus.CANCELLED

    [claimed] = await claim()
    claimed.status = JobStatus.SUCCEEDED

    record = await broker.get(job.id)
    assert record.priority == 0
    assert record.status == JobStatus.RUNNING


async def test_a_closed_broker_can_connect_again(broker: Broker, make_job, claim):
    job = make_job()
    await broker.enqueue([job])
    await broker.close()
    await broker.connect()

    assert [j.id for j in await claim()] == [job.id]
