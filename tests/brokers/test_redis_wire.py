"""afterwork's own Redis connection: URL options, sharing one connection among many
coroutines, blocking commands on connections of their own, and a server that
stops answering."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from records import job
from redis_servers import REDIS_SERVER, RedisServer, free_port
from services import require_service, service_unavailable

from afterwork.brokers import create_broker
from afterwork.brokers.redis import RedisBroker
from afterwork.brokers.redis_connection import RedisConnection
from afterwork.brokers.redis_wire import Address, WireConnection
from afterwork.clock import ManualClock
from afterwork.errors import BrokerConnectionError, BrokerError, InvalidURL

SERVER = os.environ.get("AFTERWORK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15").split("?")[0]
SECRET = "s3cret-Pa55"


@pytest.fixture
async def broker() -> AsyncIterator[RedisBroker]:
    require_service("Redis", SERVER)
    made = create_broker(f"{SERVER}?prefix=t{uuid.uuid4().hex[:12]}", clock=ManualClock())
    assert isinstance(made, RedisBroker)
    await made.connect()
    yield made
    await made.delete_all()
    await made.close()


def test_an_unknown_url_option_is_refused_by_name_without_the_password():
    with pytest.raises(InvalidURL, match="unknown option retry_on_timeout") as raised:
        create_broker(
            f"redis://:{SECRET}@localhost:6379/0?retry_on_timeout=yes", clock=ManualClock()
        )

    assert SECRET not in str(raised.value)
    assert "socket_timeout" in str(raised.value)  # names what it does take


def test_the_url_sets_the_database_the_timeouts_and_tls():
    address = Address.from_url(
        "rediss://user:pw@cache.example.com:6380/2?socket_timeout=4&ssl_cert_reqs=none",
        connect_timeout=5.0,
        timeout=30.0,
    )

    assert (address.host, address.port, address.db) == ("cache.example.com", 6380, 2)
    assert (address.username, address.password, address.timeout) == ("user", "pw", 4.0)
    assert address.tls is not None
    assert not address.tls.check_hostname


async def test_round_trips_from_many_coroutines_share_one_connection_and_get_their_own_replies(
    broker: RedisBroker,
):
    await broker.enqueue([job(f"j{i:03}", broker.clock, timeout=float(i + 1)) for i in range(200)])

    found = await asyncio.gather(*(broker.get(f"j{i:03}") for i in range(200)))

    assert [(r.id, r.timeout) for r in found if r] == [(f"j{i:03}", i + 1.0) for i in range(200)]
    [(state, _)] = broker._redis._loops.values()
    assert state.conn is not None
    assert not state.conn.closed
    assert not state.idle
    assert broker._redis.functions  # Redis 7: the scripts are one function library


async def test_a_blocking_wait_cut_short_closes_its_connection_and_the_next_one_works(
    broker: RedisBroker,
):
    waiting = asyncio.create_task(broker.reserve(["default"], 1, worker="w1", lease=30, block=30))
    await _until_a_client_blocks(broker._redis)

    broker.wake()
    assert await asyncio.wait_for(waiting, 5) == []

    await broker.enqueue([job("j1", broker.clock)])
    claimed = await broker.reserve(["default"], 1, worker="w1", lease=30, block=5)
    assert [j.id for j in claimed] == ["j1"]


async def _until_a_client_blocks(connection: RedisConnection) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        [clients] = await connection.send([("CLIENT", "LIST")])
        if b"cmd=blpop" in clients:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no BLPOP within 5 s")


async def test_a_server_that_stops_answering_is_given_up_after_the_socket_timeout():
    """A listener that accepts and reads but never replies: the watchdog closes it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", free_port()))
    listener.listen()
    port = listener.getsockname()[1]
    loop = asyncio.get_running_loop()
    accepted: list[socket.socket] = []
    listener.setblocking(False)
    server = loop.create_task(_accept_forever(listener, accepted))
    broker = create_broker(
        f"redis://:{SECRET}@127.0.0.1:{port}/0?socket_timeout=1", clock=ManualClock()
    )
    started = time.monotonic()
    try:
        with pytest.raises(BrokerConnectionError) as raised:
            await broker.connect()
        assert time.monotonic() - started < 5
        assert SECRET not in str(raised.value)
    finally:
        server.cancel()
        for sock in [listener, *accepted]:
            sock.close()
        await broker.close()


async def _accept_forever(listener: socket.socket, accepted: list[socket.socket]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        sock, _ = await loop.sock_accept(listener)
        accepted.append(sock)


async def test_a_reply_for_nobody_closes_the_connection_and_fails_what_waits():
    require_service("Redis", SERVER)
    address = Address.from_url(SERVER, connect_timeout=5.0, timeout=30.0)
    connection = await WireConnection.open(address)
    try:
        asked = connection.send([("PING",)])
        connection.data_received(b"+PONG\r\n")  # a reply nobody asked for, after ours
        connection.data_received(b"+PONG\r\n")
        assert await asked == [b"PONG"]
        assert connection.closed
    finally:
        connection.close()


async def test_where_functions_cannot_be_loaded_the_scripts_run_by_evalsha(broker: RedisBroker):
    """A server older than Redis 7, or a user without FUNCTION rights: same behaviour."""
    user, password = f"nofn{uuid.uuid4().hex[:8]}", "pw-no-functions"
    [created] = await broker._redis.send(
        [("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-function")]
    )
    assert created == b"OK"
    prefix = f"t{uuid.uuid4().hex[:12]}"
    limited = create_broker(
        SERVER.replace("redis://", f"redis://{user}:{password}@") + f"?prefix={prefix}",
        clock=ManualClock(),
    )
    assert isinstance(limited, RedisBroker)
    try:
        await limited.connect()
        await limited.enqueue([job("j1", limited.clock)])
        [claimed] = await limited.reserve(["default"], 1, worker="w1", lease=30)

        assert not limited._redis.functions
        assert claimed.id == "j1"
        assert (await broker._locate(["j1"])) == {}  # another prefix: not this broker's
    finally:
        await limited.delete_all()
        await limited.close()
        await broker._redis.send([("ACL", "DELUSER", user)])


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory):
    """A redis-server that speaks TLS (on its tls_port) with a self-signed certificate
    and wants a password."""
    if REDIS_SERVER is None:
        service_unavailable("redis-server", "rediss://127.0.0.1", "redis-server is not installed")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed, so no certificate can be made for a TLS test")
    directory = tmp_path_factory.mktemp("tls-redis")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    tls_port = free_port()
    server = RedisServer(
        directory, "--tls-port", str(tls_port), "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-auth-clients", "no", "--requirepass", SECRET,
    ).start()  # fmt: skip
    yield tls_port, cert
    server.stop()


async def test_a_tls_url_reaches_a_tls_server_and_checks_its_certificate(
    tls_server: tuple[int, Path],
):
    port, cert = tls_server
    trusted = create_broker(
        f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_ca_certs={cert}&prefix=tls",
        clock=ManualClock(),
    )
    unchecked = create_broker(
        f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_cert_reqs=none&prefix=tls",
        clock=ManualClock(),
    )
    strangers = create_broker(f"rediss://:{SECRET}@127.0.0.1:{port}/0", clock=ManualClock())
    try:
        await trusted.connect()
        await trusted.enqueue([job("j1", trusted.clock)])
        await unchecked.connect()
        [claimed] = await unchecked.reserve(["default"], 1, worker="w1", lease=30)
        assert claimed.id == "j1"

        with pytest.raises(BrokerConnectionError, match="certificate") as raised:
            await strangers.connect()  # a self-signed certificate nobody said to trust
        assert SECRET not in str(raised.value)
    finally:
        for broker in (trusted, unchecked, strangers):
            await broker.close()


async def test_an_argument_redis_cannot_carry_fails_that_call_and_the_connection_goes_on(
    broker: RedisBroker,
):
    await broker.enqueue([job("kept", broker.clock)])
    odd = msgspec.structs.replace(job("odd", broker.clock), payload=bytearray(b"[[], {}]"))

    with pytest.raises(BrokerError, match=r"cannot send \w+ to Redis.*bytearray"):
        await broker.enqueue([odd])

    found = await asyncio.gather(*(broker.get(i) for i in ("kept", "odd", "kept")))
    assert [r.id if r else None for r in found] == ["kept", None, "kept"]


async def test_a_caller_cancelled_while_the_connection_opens_does_not_cancel_the_others():
    require_service("Redis", SERVER)
    made = create_broker(f"{SERVER}?prefix=t{uuid.uuid4().hex[:12]}", clock=ManualClock())
    first = asyncio.create_task(made.get("a"))
    second = asyncio.create_task(made.get("b"))
    await asyncio.sleep(0)  # both wait for the one connection being opened

    first.cancel()

    assert await asyncio.wait_for(second, 5) is None
    assert first.cancelled()
    await made.close()


async def test_calls_made_before_connect_run_as_soon_as_the_scripts_are_loaded():
    require_service("Redis", SERVER)
    made = create_broker(f"{SERVER}?prefix=t{uuid.uuid4().hex[:12]}", clock=ManualClock())
    assert isinstance(made, RedisBroker)
    try:
        [stored] = await made.enqueue([job("j1", made.clock)])  # no connect() first
        [claimed] = await made.reserve(["default"], 1, worker="w1", lease=30)

        assert (stored.id, claimed.id) == ("j1", "j1")
    finally:
        await made.delete_all()
        await made.close()


async def test_a_password_changed_under_a_running_app_gives_a_connection_error(tmp_path: Path):
    if REDIS_SERVER is None:
        service_unavailable("redis-server", "redis://127.0.0.1", "redis-server is not installed")
    server = RedisServer(tmp_path, "--requirepass", SECRET).start()
    made = create_broker(f"redis://:{SECRET}@127.0.0.1:{server.port}/0", clock=ManualClock())
    try:
        await made.connect()
        server.cli("-a", SECRET, "--no-auth-warning", "CONFIG", "SET", "requirepass", "rotated")
        server.cli("-a", "rotated", "--no-auth-warning", "CLIENT", "KILL", "TYPE", "normal")

        with pytest.raises(BrokerConnectionError, match=r"WRONGPASS|invalid") as raised:
            await made.get("j1")
        assert SECRET not in str(raised.value)
    finally:
        await made.close()
        server.stop()


@pytest.mark.parametrize(
    ("url", "fault"),
    [
        ("rediss://h/0?ssl_cert_reqs=none&ssl_check_hostname=true", "TLS options"),
        ("rediss://h/0?ssl_ca_certs=/no/such/ca.pem", "TLS options"),
    ],
)
def test_tls_options_that_cannot_work_are_refused_with_the_url(url: str, fault: str):
    with pytest.raises(InvalidURL, match=fault):
        create_broker(url, clock=ManualClock())


def test_a_cluster_url_passes_redis_py_options_on():
    broker = create_broker(
        "redis://node-1:7000?cluster=yes&read_from_replicas=yes", clock=ManualClock()
    )

    assert isinstance(broker, RedisBroker)
    assert broker.cluster
