"""What only the Redis broker does: read its URL, explain why it cannot connect,
keep apps apart by prefix, dead-letter what it cannot read, leave nothing behind,
spend few round trips, and carry on through a server restart and on a cluster.

Most tests use the Redis the conformance suite uses (db 15, a fresh prefix
each); the restart, password and Unix-socket tests start their own
``redis-server``, and the cluster test shares the suite's three-node cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis
from records import job
from redis.asyncio.connection import parse_url
from redis.cluster import key_slot
from redis_servers import REDIS_SERVER, RedisServer, free_port
from services import require_service, service_unavailable

from afterwork import Afterwork
from afterwork.brokers import Outcome, OutcomeKind, create_broker
from afterwork.brokers.redis import RedisBroker
from afterwork.brokers.redis_connection import RedisConnection, parse_redis_url
from afterwork.clock import Clock, ManualClock
from afterwork.errors import BrokerConnectionError, InvalidURL, MissingDependency
from afterwork.job import ErrorInfo, JobStatus

SERVER = os.environ.get("AFTERWORK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15").split("?")[0]
SECRET = "s3cret-Pa55"
BOOM = ErrorInfo("ValueError", "boom")


async def echo(value: int) -> int:
    return value


async def slow_echo(value: int) -> int:
    await asyncio.sleep(0.05)
    return value


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def url(prefix: str) -> str:
    require_service("Redis", SERVER)
    return f"{SERVER}?prefix={prefix}"


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    """A plain client on the test server, to look at keys and write what afterwork would not."""
    require_service("Redis", SERVER)
    client = aioredis.Redis.from_url(SERVER)
    yield client
    await client.aclose()


OpenBroker = Callable[..., Awaitable[RedisBroker]]


@pytest.fixture
async def open_broker(url: str) -> AsyncIterator[OpenBroker]:
    """Connected Redis brokers (on ``url`` unless told otherwise), emptied and closed after."""
    opened: list[RedisBroker] = []

    async def open_(at: str = url, clock: Clock | None = None) -> RedisBroker:
        broker = create_broker(at, clock=clock or ManualClock(), dead_letter_ttl=5_000.0)
        assert isinstance(broker, RedisBroker)
        await broker.connect()
        opened.append(broker)
        return broker

    yield open_
    for broker in opened:
        await broker.delete_all()
        await broker.close()


async def keys_of(raw: aioredis.Redis, prefix: str) -> set[str]:
    patterns = [f"{{{prefix}}}:*", f"{{{prefix}:*", f"{prefix}:*"]
    return {k.decode() for p in patterns async for k in raw.scan_iter(match=p)}


# -- URLs and connecting ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "prefix", "cluster"),
    [
        ("redis://localhost:6379/0", "afterwork", False),
        ("rediss://:pw@cache.example.com:6380/2?prefix=myapp", "myapp", False),
        ("unix:///run/redis.sock?db=3&prefix=a.b-c_d", "a.b-c_d", False),
        ("redis://node-1:7000?cluster=yes&prefix=shop", "shop", True),
    ],
)
def test_each_url_form_makes_a_redis_broker_with_its_options(url: str, prefix: str, cluster: bool):
    broker = create_broker(url, clock=ManualClock())

    assert isinstance(broker, RedisBroker)
    assert (broker.prefix, broker.cluster) == (prefix, cluster)
    assert broker.durable


DOCUMENTED_URLS = re.findall(
    r"^\| `((?:redis|rediss|unix)://[^`]+)` \|",
    (Path(__file__).parents[2] / "docs" / "redis.md").read_text(),
    re.MULTILINE,
)


@pytest.mark.parametrize("url", DOCUMENTED_URLS)
def test_every_url_form_in_the_docs_is_understood_by_the_installed_redis_py(url: str):
    # CI runs this on the oldest and the newest redis-py the extra admits: the URL a
    # broker hands redis-py (for the cluster client, and for parsing) must suit both.
    broker = create_broker(url, clock=ManualClock())

    assert isinstance(broker, RedisBroker)
    client_url, _, _ = parse_redis_url(url)
    options = parse_url(client_url)
    assert options.get("path") or options.get("host")


def test_the_docs_list_every_redis_url_scheme():
    assert {u.partition(":")[0] for u in DOCUMENTED_URLS} == {"redis", "rediss", "unix"}


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@localhost:port/0",
        f"redis://:{SECRET}@localhost:6379/zero",
        f"redis://:{SECRET}@localhost:6379/0?prefix=",
        f"redis://:{SECRET}@localhost:6379/0?prefix=a:b",
        f"redis://:{SECRET}@localhost:6379/0?prefix={{app}}",
        f"redis://:{SECRET}@localhost:6379/0?cluster=maybe",
    ],
)
def test_a_malformed_redis_url_raises_invalid_url_without_its_password(url: str):
    with pytest.raises(InvalidURL) as raised:
        create_broker(url, clock=ManualClock())

    assert SECRET not in str(raised.value)
    assert "***" in str(raised.value)


async def test_an_unreachable_server_raises_one_broker_connection_error_without_the_password():
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    broker = create_broker(url, clock=ManualClock())
    started = time.monotonic()

    with pytest.raises(BrokerConnectionError) as raised:
        await broker.connect()

    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert message.startswith("cannot connect to Redis at redis://:***@127.0.0.1:")
    assert SECRET not in message
    assert SECRET not in str(raised.value.__cause__)
    await broker.close()


async def test_a_tls_url_that_cannot_connect_raises_broker_connection_error():
    broker = create_broker(f"rediss://:{SECRET}@127.0.0.1:{free_port()}/0", clock=ManualClock())

    with pytest.raises(BrokerConnectionError, match=r"rediss://:\*\*\*@") as raised:
        await broker.connect()

    assert SECRET not in str(raised.value)
    await broker.close()


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory):
    """A server that wants a password and also listens on a Unix socket."""
    if REDIS_SERVER is None:
        service_unavailable("redis-server", "redis://127.0.0.1", "redis-server is not installed")
    directory = tmp_path_factory.mktemp("private-redis")
    socket_path = directory / "redis.sock"
    server = RedisServer(
        directory, "--requirepass", SECRET, "--unixsocket", str(socket_path)
    ).start()
    yield server, socket_path
    server.stop()


async def test_a_wrong_password_raises_broker_connection_error_and_the_right_one_works(
    private_server, open_broker: OpenBroker
):
    server, _ = private_server
    wrong = create_broker(f"redis://:wrong-{SECRET}@127.0.0.1:{server.port}/0", clock=Clock())

    with pytest.raises(BrokerConnectionError, match="cannot connect to Redis") as raised:
        await wrong.connect()
    assert SECRET not in str(raised.value)
    await wrong.close()

    broker = await open_broker(f"redis://:{SECRET}@127.0.0.1:{server.port}/0?prefix=pw")
    await broker.enqueue([job("j1", broker.clock)])
    assert (await broker.get("j1")).status == JobStatus.QUEUED


async def test_a_unix_socket_url_reaches_the_server(private_server, open_broker: OpenBroker):
    _, socket_path = private_server
    broker = await open_broker(f"unix://:{SECRET}@{socket_path}?db=2&prefix=sock")

    await broker.enqueue([job("j1", broker.clock)])

    [claimed] = await broker.reserve(["default"], 10, worker="w1", lease=30)
    assert claimed.id == "j1"


def test_a_missing_redis_package_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "hiredis", None)
    for module in [m for m in sys.modules if m.startswith("afterwork.brokers.redis")]:
        monkeypatch.delitem(sys.modules, module)

    with pytest.raises(MissingDependency, match=r"pip install 'afterwork\[redis\]'"):
        create_broker("redis://localhost:6379/0", clock=ManualClock())
    with pytest.raises(MissingDependency, match=r"afterwork\[redis\]"):
        Afterwork("rediss://localhost:6380/0")


# -- keys -------------------------------------------------------------------------------


async def test_apps_with_their_own_prefixes_do_not_see_each_others_jobs(
    open_broker: OpenBroker, raw: aioredis.Redis
):
    shop = await open_broker(f"{SERVER}?prefix=shop{uuid.uuid4().hex[:6]}")
    blog = await open_broker(f"{SERVER}?prefix=blog{uuid.uuid4().hex[:6]}")
    await shop.enqueue([job("same-id", shop.clock), job("only-shop", shop.clock)])
    await blog.enqueue([job("same-id", blog.clock, queue="posts")])

    assert await blog.get("only-shop") is None
    assert (await blog.get("same-id")).queue == "posts"
    assert await blog.reserve(["default"], 10, worker="w1", lease=30) == []
    assert await shop.stats() == {"default": {"queued": 2}}
    assert await blog.stats() == {"posts": {"queued": 1}}

    await blog.delete_all()

    assert await keys_of(raw, blog.prefix) == set()
    assert len(await shop.reserve(["default"], 10, worker="w1", lease=30)) == 2


async def test_an_undecodable_job_goes_to_the_dead_letter_queue_and_the_worker_goes_on(
    url: str, prefix: str, raw: aioredis.Redis
):
    app = Afterwork(url)
    task = app.task(echo)
    try:
        good = await task.aenqueue(1)
        broken = await task.aenqueue(2)
        later = await task.aenqueue(3)
        # Fields overwritten by hand, and a job nobody enqueued, in afterwork's keys.
        await raw.hset(f"{{{prefix}:default}}:job:{broken.id}", mapping={"priority": "urgent"})
        await raw.hset(f"{{{prefix}:default}}:job:by-hand", mapping={"colour": "blue"})
        await raw.zadd(f"{{{prefix}:default}}:ready", {"by-hand": 0})

        worker = app.worker(burst=True)
        await asyncio.wait_for(worker.run(), 10)

        assert [await good.aresult(1), await later.aresult(1)] == [1, 3]
        dead = {j.id: j for j in await app.broker.list_jobs(status=JobStatus.FAILED)}
        assert set(dead) == {broken.id, "by-hand"}
        assert dead[broken.id].error.type == "afterwork.errors.CorruptJob"
        assert "priority is b'urgent'" in dead[broken.id].error.message
        assert "spec is missing" in dead["by-hand"].error.message
        assert "unknown fields colour" in dead["by-hand"].error.message
    finally:
        await app.broker.delete_all()
        await app.aclose()


async def test_after_jobs_finish_and_expire_recover_leaves_only_the_registry_and_wake_keys(
    open_broker: OpenBroker, raw: aioredis.Redis, prefix: str
):
    clock = ManualClock()
    broker = await open_broker(clock=clock)
    ok, failed, retried, lost = (job(f"j{i}", clock, unique_key=f"k{i}") for i in range(4))
    cancelled_waiting, cancelled_running = job("c1", clock), job("c2", clock, queue="mail")
    await broker.enqueue([ok, failed, retried, lost, cancelled_waiting, cancelled_running])
    await broker.cancel(cancelled_waiting.id)
    await broker.reserve(["default", "mail"], 10, worker="w1", lease=30)
    await broker.cancel(cancelled_running.id)
    waiter = asyncio.create_task(broker.wait(ok.id, timeout=5))
    await asyncio.sleep(0.05)
    outcome = Outcome
    await broker.settle(
        [
            outcome(job_id=ok.id, worker="w1", kind=OutcomeKind.SUCCEEDED, result=b"1"),
            outcome(job_id=failed.id, worker="w1", kind=OutcomeKind.FAILED, error=BOOM),
            outcome(job_id=retried.id, worker="w1", kind=OutcomeKind.RETRY, error=BOOM),
            outcome(job_id=cancelled_running.id, worker="w1", kind=OutcomeKind.CANCELLED),
        ]
    )
    assert (await waiter).status == JobStatus.SUCCEEDED
    await broker.reserve(["default"], 10, worker="w2", lease=30)
    await broker.settle([outcome(job_id=retried.id, worker="w2", kind=OutcomeKind.SUCCEEDED)])
    clock.advance(31)
    assert await broker.recover() == 1  # `lost`: back in its queue
    await broker.reserve(["default"], 10, worker="w3", lease=30)
    await broker.settle([outcome(job_id=lost.id, worker="w3", kind=OutcomeKind.SUCCEEDED)])
    assert len(await keys_of(raw, prefix)) > 10

    clock.advance(broker.dead_letter_ttl)
    await broker.recover()

    assert await keys_of(raw, prefix) == {
        f"{{{prefix}}}:queues",
        f"{{{prefix}}}:wake:default",
        f"{{{prefix}}}:wake:mail",
    }
    assert await broker.stats() == {}
    assert len(await raw.lrange(f"{{{prefix}}}:wake:default", 0, -1)) <= 64


async def test_finished_jobs_get_a_redis_expiry_in_case_recover_never_runs(
    open_broker: OpenBroker, raw: aioredis.Redis, prefix: str
):
    broker = await open_broker()
    await broker.enqueue([job("done", broker.clock), job("waiting", broker.clock)])
    await broker.reserve(["default"], 1, worker="w1", lease=30)
    await broker.settle([Outcome(job_id="done", worker="w1", kind=OutcomeKind.SUCCEEDED)])

    done_ttl = await raw.ttl(f"{{{prefix}:default}}:job:done")
    waiting_ttl = await raw.ttl(f"{{{prefix}:default}}:job:waiting")

    assert 60 < done_ttl <= 60 + 60  # the job's result TTL plus a grace
    assert waiting_ttl == -1


async def test_delayed_and_retrying_jobs_wait_in_redis_for_any_broker_to_claim(
    open_broker: OpenBroker,
):
    clock = ManualClock()
    producer = await open_broker(clock=clock)
    later = msgspec.structs.replace(job("later", clock), run_at=clock.now() + 60)
    await producer.enqueue([job("retried", clock), later])
    await producer.reserve(["default"], 10, worker="w1", lease=30)
    retry_at = clock.now() + 30
    await producer.settle(
        [Outcome(job_id="retried", worker="w1", kind=OutcomeKind.RETRY, retry_at=retry_at)]
    )
    await producer.close()  # nothing about the waiting jobs is kept in this process

    consumer = await open_broker(clock=clock)
    assert await consumer.reserve(["default"], 10, worker="w2", lease=30) == []
    clock.advance(30)
    assert [j.id for j in await consumer.reserve(["default"], 10, worker="w2", lease=30)] == [
        "retried"
    ]
    clock.advance(30)
    assert [j.id for j in await consumer.reserve(["default"], 10, worker="w2", lease=30)] == [
        "later"
    ]


# -- round trips and waking -------------------------------------------------------------


async def test_enqueue_claim_extend_and_settle_of_a_batch_are_one_round_trip_each(
    open_broker: OpenBroker, monkeypatch: pytest.MonkeyPatch
):
    broker = await open_broker()
    trips: list[int] = []
    send = RedisConnection.send

    async def counting_send(self, commands):
        if commands:
            trips.append(len(commands))
        return await send(self, commands)

    async def counting_stream(self, commands, then):
        trips.append(1)  # written as built, read back together: one round trip
        return await stream(self, commands, then)

    stream = RedisConnection._send_as_built
    monkeypatch.setattr(RedisConnection, "send", counting_send)
    monkeypatch.setattr(RedisConnection, "_send_as_built", counting_stream)
    jobs = [job(f"j{i:03}", broker.clock, queue=("a", "b")[i % 2]) for i in range(200)]

    async def count(action: Awaitable[object]) -> int:
        trips.clear()
        await action
        return len(trips)

    assert await count(broker.enqueue(jobs)) == 1
    assert await count(broker.reserve(["a"], 100, worker="w1", lease=30)) == 1
    assert await count(broker.extend("w1", [j.id for j in jobs[::2]], 30)) == 1
    outcomes = [Outcome(job_id=j.id, worker="w1", kind=OutcomeKind.SUCCEEDED) for j in jobs[::2]]
    assert await count(broker.settle(outcomes)) == 1
    assert await count(broker.reserve(["a", "b"], 100, worker="w1", lease=30)) == 2


async def test_a_waiter_hears_of_a_result_settled_on_another_connection_at_once(
    open_broker: OpenBroker,
):
    waiting_side = await open_broker(clock=Clock())
    worker_side = await open_broker(clock=Clock())
    await worker_side.enqueue([job("j1", worker_side.clock)])
    await worker_side.reserve(["default"], 1, worker="w1", lease=30)
    waiter = asyncio.create_task(waiting_side.wait("j1", timeout=10))
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()

    started = loop.time()
    done = Outcome(job_id="j1", worker="w1", kind=OutcomeKind.SUCCEEDED, result=b"7")
    await worker_side.settle([done])
    record = await asyncio.wait_for(waiter, 5)

    assert record.result == b"7"
    assert loop.time() - started < 0.3  # no polling: the settle script wakes the waiter


# -- a server restart -------------------------------------------------------------------


async def test_a_worker_carries_on_through_a_redis_restart_and_no_job_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    if REDIS_SERVER is None:
        service_unavailable("redis-server", "redis://127.0.0.1", "redis-server is not installed")
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always").start()
    app = Afterwork(f"redis://127.0.0.1:{server.port}/0?prefix=restart")
    task = app.task(slow_echo)
    worker = app.worker(concurrency=4, block=0.2, lease=30)
    running: asyncio.Task[None] | None = None
    try:
        handles = [await task.aenqueue(i) for i in range(40)]
        running = asyncio.create_task(worker.run())
        await handles[7].aresult(timeout=10)  # the worker is well under way

        with caplog.at_level(logging.WARNING, logger="afterwork.worker"):
            # Down long enough that redis-py's own reconnect attempts give up.
            await asyncio.to_thread(server.restart, 2.0)
            handles += [await task.aenqueue(i) for i in range(40, 50)]
            results = [await h.aresult(timeout=30) for h in handles]

        assert results == list(range(50))
        warnings = " ".join(r.getMessage() for r in caplog.records)
        assert "lost the connection to Redis at redis://127.0.0.1" in warnings
        assert worker.processed == 50
    finally:
        worker.stop()
        if running is not None:
            await asyncio.wait_for(running, 10)
        await app.aclose()
        server.stop()


# -- a cluster --------------------------------------------------------------------------


def queue_on_each_third_of_the_slots(prefix: str) -> list[str]:
    """Queue names whose keys hash to the first, middle and last third of the slots,
    so on a three-node cluster each queue lives on its own node."""
    found: dict[int, str] = {}
    for n in range(1000):
        name = f"q{n}"
        found.setdefault(key_slot(f"{{{prefix}:{name}}}:ready".encode()) * 3 // 16384, name)
        if len(found) == 3:
            break
    return [found[i] for i in range(3)]


async def test_on_a_cluster_each_queue_keeps_to_one_slot_and_a_worker_drains_them_all(
    redis_cluster: str, prefix: str
):
    url = f"redis://{redis_cluster}/0?cluster=yes&prefix={prefix}"
    app = Afterwork(url)
    queues = queue_on_each_third_of_the_slots(prefix)
    task = app.task(echo)
    try:
        handles = [
            await task.using(queue=queues[i % 3], priority=i % 5).aenqueue(i) for i in range(30)
        ]
        worker = app.worker(queues=queues, concurrency=10, burst=True)
        await asyncio.wait_for(worker.run(), 20)

        assert [await h.aresult(5) for h in handles] == list(range(30))
        broker = app.broker
        assert isinstance(broker, RedisBroker)
        for queue in queues:
            [ready_slot] = {key_slot(k.encode()) for k in broker._queue(queue).keys}
            assert key_slot(broker._queue(queue).job(handles[0].id).encode()) == ready_slot
        slots = {key_slot(broker._queue(q).keys[0].encode()) * 3 // 16384 for q in queues}
        assert slots == {0, 1, 2}
    finally:
        await app.broker.delete_all()
        await app.aclose()


async def test_a_job_handle_reads_and_waits_on_a_cluster(redis_cluster: str, prefix: str):
    url = f"redis://{redis_cluster}/0?cluster=yes&prefix={prefix}"
    producer, consumer = Afterwork(url), Afterwork(url)
    consumer.task(echo)
    task = producer.task(echo)
    try:
        handle = await task.aenqueue(42)
        waiting = asyncio.create_task(handle.aresult(timeout=10))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(consumer.worker(burst=True).run(), 10)

        assert await waiting == 42
        assert (await handle.ainfo()).status == JobStatus.SUCCEEDED
    finally:
        await producer.broker.delete_all()
        await producer.aclose()
        await consumer.aclose()
