"""What only the SQLite broker does: open a file, explain why it cannot, keep jobs on disk."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from pathlib import Path

import pytest
from records import job

from afterwork.brokers import WorkerInfo, create_broker
from afterwork.brokers.sqlite import SQLiteBroker
from afterwork.clock import Clock, ManualClock
from afterwork.errors import BrokerConnectionError, InvalidURL


async def test_a_path_whose_directory_does_not_exist_raises_broker_connection_error(
    tmp_path: Path,
):
    path = tmp_path / "missing" / "jobs.db"
    broker = create_broker(f"sqlite:///{path}", clock=ManualClock())

    with pytest.raises(BrokerConnectionError, match=str(path)):
        await broker.connect()


async def test_a_file_that_is_not_a_sqlite_database_raises_broker_connection_error(
    tmp_path: Path,
):
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    broker = create_broker(f"sqlite:///{path}", clock=ManualClock())

    with pytest.raises(BrokerConnectionError, match=str(path)) as raised:
        await broker.connect()

    assert "not a database" in str(raised.value)
    assert path.read_bytes().startswith(b"these are my notes")


async def test_a_broker_that_failed_to_connect_can_connect_once_the_problem_is_fixed(
    tmp_path: Path,
):
    directory = tmp_path / "later"
    broker = create_broker(f"sqlite:///{directory}/jobs.db", clock=ManualClock())
    with pytest.raises(BrokerConnectionError):
        await broker.connect()

    directory.mkdir()
    await broker.connect()
    try:
        assert await broker.stats() == {}
    finally:
        await broker.close()


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///", "sqlite://host/jobs.db", "sqlite:jobs.db", "sqlite://jobs.db"],
)
def test_an_invalid_sqlite_url_raises_invalid_url(url: str):
    with pytest.raises(InvalidURL, match=re.escape(repr(url))):
        create_broker(url, clock=ManualClock())


def test_a_url_with_three_slashes_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)

    relative = create_broker("sqlite:///data/jobs.db", clock=ManualClock())
    absolute = create_broker(f"sqlite:///{tmp_path}/jobs.db", clock=ManualClock())

    assert isinstance(relative, SQLiteBroker)
    assert isinstance(absolute, SQLiteBroker)
    assert relative.path == str(tmp_path / "data" / "jobs.db")
    assert absolute.path == str(tmp_path / "jobs.db")


async def test_jobs_survive_a_new_broker_on_the_same_file(tmp_path: Path):
    clock = ManualClock()
    url = f"sqlite:///{tmp_path}/jobs.db"
    first = create_broker(url, clock=clock)
    await first.connect()
    await first.enqueue([job("kept", clock)])
    await first.close()

    second = create_broker(url, clock=clock)
    await second.connect()
    try:
        [claimed] = await second.reserve(["default"], 10, worker="w1", lease=30)
    finally:
        await second.close()

    assert claimed.id == "kept"


async def test_a_blocked_reserve_does_not_poll_for_jobs_in_queues_it_does_not_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    clock = Clock()
    broker = create_broker(f"sqlite:///{tmp_path}/jobs.db", clock=clock)
    assert isinstance(broker, SQLiteBroker)
    await broker.connect()
    claims = 0
    claim = broker._claim

    def counting_claim(*args):
        nonlocal claims
        claims += 1
        return claim(*args)

    monkeypatch.setattr(broker, "_claim", counting_claim)
    try:
        await broker.enqueue([job("elsewhere", clock, queue="other")])
        reserved = await asyncio.wait_for(
            broker.reserve(["default"], 1, worker="w1", lease=30, block=0.3), 5
        )
    finally:
        await broker.close()

    assert reserved == []
    assert claims <= 3, f"reserve looked for work {claims} times in 0.3 s"


async def test_a_write_waiting_for_another_process_lock_does_not_stall_the_event_loop(
    tmp_path: Path, make_job
) -> None:
    broker = create_broker(f"sqlite:///{tmp_path}/x.db", clock=Clock())
    await broker.connect()
    other = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def ticker() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - last)
            last = loop.time()

    ticking = asyncio.create_task(ticker())
    enqueue = asyncio.create_task(broker.enqueue([make_job()]))
    await asyncio.sleep(0.6)  # hold the lock this long, as a slow writer would
    assert not enqueue.done()
    other.execute("COMMIT")
    await asyncio.wait_for(enqueue, 5)
    ticking.cancel()

    assert max(gaps) < 0.25, f"the event loop stalled for {max(gaps):.2f}s"
    assert len(await broker.list_jobs()) == 1
    other.close()
    await broker.close()


async def test_a_worker_not_heard_from_for_a_minute_is_forgotten(tmp_path: Path) -> None:
    clock = ManualClock()
    broker = create_broker(f"sqlite:///{tmp_path}/x.db", clock=clock)
    await broker.connect()
    info = WorkerInfo(
        id="gone", hostname="h", pid=1, queues=["default"], concurrency=1,
        started_at=clock.now(), last_seen=clock.now(),
    )  # fmt: skip
    await broker.register_worker(info)
    clock.advance(61)
    await broker.recover()
    assert await broker.workers(alive_within=3600) == []
    await broker.close()


def test_many_processes_opening_a_new_file_at_once_all_connect(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/new.db"
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def open_one() -> None:
        broker = create_broker(url, clock=Clock())
        start.wait()
        try:
            asyncio.run(broker.connect())
        except BaseException as exc:
            errors.append(exc)
        finally:
            asyncio.run(broker.close())

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
