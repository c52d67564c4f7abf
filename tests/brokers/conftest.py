"""One behaviour suite for every broker: the fixtures that choose and build them.

Every test that asks for ``broker`` (or ``make_broker``) runs once per entry
in :data:`BROKERS`. A new engine joins the suite with one line there, e.g.::

    "redis": BrokerSpec("redis://localhost:6379/15", "Redis", "AFTERWORK_TEST_REDIS_URL"),

An engine whose server is not running (or whose driver is not installed) is
skipped with a reason that names it, unless ``AFTERWORK_REQUIRE_SERVICES=1``
(as in CI), where that is a failure.

Time is a :class:`ManualClock`: delays, backoff, leases and expiry are tested
by moving it forward, never by sleeping.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from redis_servers import RedisCluster
from services import require_service, service_unavailable

from afterwork.brokers import Broker, create_broker
from afterwork.clock import Clock, ManualClock
from afterwork.errors import BrokerConnectionError, MissingDependency
from afterwork.job import JobRecord, JobStatus

#: Dead letters are kept this long by the brokers under test (not the default,
#: so a test can tell the two TTLs apart).
DEAD_LETTER_TTL = 5_000.0
RESULT_TTL = 1_000.0


@dataclass(frozen=True)
class BrokerSpec:
    """How to reach one engine from the tests.

    ``url`` may contain ``{tmp_path}`` (the test's temporary directory) and
    ``{uid}`` (unique per test, for a key prefix or schema on a shared server).
    Engines that need a server name it in ``engine``; ``env`` names a variable
    that overrides the URL. ``server`` names a session fixture that starts a
    server for the suite (when ``env`` is not set) and returns its ``{address}``.
    """

    url: str
    engine: str | None = None
    env: str | None = None
    server: str | None = None

    def resolve(self, tmp_path: Path, address: str | None = None) -> str:
        url = os.environ.get(self.env, self.url) if self.env else self.url
        return url.format(tmp_path=tmp_path, uid=uuid.uuid4().hex[:12], address=address)

    def started_here(self) -> bool:
        return self.server is not None and not (self.env and os.environ.get(self.env))


BROKERS: dict[str, BrokerSpec] = {
    "memory": BrokerSpec("memory://"),
    "sqlite": BrokerSpec("sqlite:///{tmp_path}/x.db"),
    "redis": BrokerSpec(
        "redis://127.0.0.1:6379/15?prefix=t{uid}", "Redis", "AFTERWORK_TEST_REDIS_URL"
    ),
    "redis-cluster": BrokerSpec(
        "redis://{address}/0?cluster=yes&prefix=t{uid}",
        "Redis Cluster",
        "AFTERWORK_TEST_REDIS_CLUSTER_URL",
        server="redis_cluster",
    ),
}


class BrokerFactory(Protocol):
    def __call__(self, *, clock: Clock | None = None) -> Awaitable[Broker]: ...


class JobFactory(Protocol):
    def __call__(
        self,
        *,
        queue: str = ...,
        priority: int = ...,
        delay: float = ...,
        unique_key: str | None = ...,
        max_attempts: int = ...,
        result_ttl: float = ...,
        clock: Clock | None = ...,
    ) -> JobRecord: ...


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=list(BROKERS))
def broker_spec(request: pytest.FixtureRequest) -> BrokerSpec:
    return BROKERS[request.param]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-node Redis Cluster on loopback ports, for the whole session."""
    try:
        cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        service_unavailable("Redis Cluster", "redis://127.0.0.1", exc)
    yield cluster.address
    cluster.stop()


@pytest.fixture
def broker_url(broker_spec: BrokerSpec, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    address = None
    if broker_spec.started_here():
        assert broker_spec.server is not None
        address = request.getfixturevalue(broker_spec.server)
    url = broker_spec.resolve(tmp_path, address)
    if broker_spec.engine is not None:
        require_service(broker_spec.engine, url)
    return url


@pytest.fixture
async def make_broker(
    broker_spec: BrokerSpec, broker_url: str, clock: ManualClock
) -> AsyncIterator[BrokerFactory]:
    """Connected brokers on the test's engine (the same store when it is durable).

    Each call opens a separate instance, so for a durable engine that is a
    separate connection; all are closed after the test.
    """
    engine = broker_spec.engine
    manual_clock = clock
    opened: list[Broker] = []

    async def make(*, clock: Clock | None = None) -> Broker:
        used = clock if clock is not None else manual_clock
        try:
            broker = create_broker(broker_url, clock=used, dead_letter_ttl=DEAD_LETTER_TTL)
            await broker.connect()
        except (BrokerConnectionError, MissingDependency) as exc:
            if engine is None:
                raise
            service_unavailable(engine, broker_url, exc)
        opened.append(broker)
        return broker

    yield make
    if opened and hasattr(opened[0], "delete_all"):
        # Engines on a shared server offer delete_all(): the test leaves nothing behind.
        await opened[0].delete_all()
    for broker in reversed(opened):
        await broker.close()


@pytest.fixture
async def broker(make_broker: BrokerFactory) -> Broker:
    return await make_broker()


@pytest.fixture
def make_job(clock: ManualClock) -> JobFactory:
    """Build job records as a task's ``prepare`` would; ids sort in creation order."""
    counter = itertools.count()
    run = uuid.uuid4().hex[:6]
    manual_clock = clock

    def make(
        *,
        queue: str = "default",
        priority: int = 0,
        delay: float = 0.0,
        unique_key: str | None = None,
        max_attempts: int = 3,
        result_ttl: float = RESULT_TTL,
        clock: Clock | None = None,
    ) -> JobRecord:
        now = (clock or manual_clock).now()
        return JobRecord(
            id=f"job-{run}-{next(counter):05d}",
            task="tests.noop",
            queue=queue,
            priority=priority,
            payload=b'{"args":[],"kwargs":{}}',
            status=JobStatus.SCHEDULED if delay > 0 else JobStatus.QUEUED,
            run_at=now + delay,
            enqueued_at=now,
            max_attempts=max_attempts,
            result_ttl=result_ttl,
            unique_key=unique_key,
        )

    return make


@pytest.fixture
def claim(broker: Broker) -> Callable[..., Awaitable[list[JobRecord]]]:
    """``reserve`` with the suite's usual worker, lease and queue."""

    async def claim(
        limit: int = 100,
        *,
        queues: tuple[str, ...] = ("default",),
        worker: str = "w1",
        lease: float = 30.0,
        **options: Any,
    ) -> list[JobRecord]:
        return await broker.reserve(queues, limit, worker=worker, lease=lease, **options)

    return claim
