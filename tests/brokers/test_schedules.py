"""Periodic fires: one claim wins per fire, and the job goes in with the claim."""

from __future__ import annotations

import asyncio

from afterwork.brokers import Broker
from afterwork.job import JobStatus


async def test_a_fire_is_claimed_once_and_its_job_enqueued_with_it(broker: Broker, make_job):
    job, twin = make_job(), make_job()

    assert await broker.claim_fire("report", 1000.0, job) is True
    assert await broker.claim_fire("report", 1000.0, twin) is False

    assert [j.id for j in await broker.list_jobs()] == [job.id]
    state = (await broker.schedule_states())["report"]
    assert (state.name, state.last_fire, state.last_job) == ("report", 1000.0, job.id)


async def test_an_earlier_fire_is_refused_and_a_later_one_wins(broker: Broker, make_job):
    first, late, stale = make_job(), make_job(), make_job()
    await broker.claim_fire("report", 1000.0, first)

    assert await broker.claim_fire("report", 900.0, stale) is False
    assert await broker.claim_fire("report", 1060.0, late) is True

    assert (await broker.schedule_states())["report"].last_fire == 1060.0
    assert await broker.get(stale.id) is None
    assert (await broker.get(late.id)).status == JobStatus.QUEUED


async def test_a_skipped_fire_is_recorded_and_keeps_the_previous_job(broker: Broker, make_job):
    job = make_job()
    await broker.claim_fire("report", 1000.0, job)

    assert await broker.claim_fire("report", 1060.0, None) is True
    assert await broker.claim_fire("report", 1060.0, make_job()) is False

    state = (await broker.schedule_states())["report"]
    assert (state.last_fire, state.last_job) == (1060.0, job.id)


async def test_schedules_are_tracked_apart(broker: Broker, make_job):
    await broker.claim_fire("a", 1000.0, make_job())
    await broker.claim_fire("b", 2000.0, make_job())

    states = await broker.schedule_states()
    assert {name: s.last_fire for name, s in states.items()} == {"a": 1000.0, "b": 2000.0}


async def test_racing_claims_for_one_fire_enqueue_one_job(broker: Broker, make_job):
    jobs = [make_job() for _ in range(20)]

    wins = await asyncio.gather(*(broker.claim_fire("report", 1000.0, j) for j in jobs))

    assert sum(wins) == 1
    assert len(await broker.list_jobs()) == 1
