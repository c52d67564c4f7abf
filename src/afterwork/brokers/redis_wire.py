"""afterwork's own connection to one Redis server: RESP over an asyncio protocol.

The broker's traffic is a few script calls per round trip, many round trips a
second. redis-py's asyncio pipeline spends about 200 µs of CPU on each on a
small machine (a connection checked out of a pool, every argument packed in
Python, a timeout around every reply); a bare asyncio round trip costs about
40. So a round trip here is one ``write`` of commands packed by hiredis, and
one future that ``data_received`` resolves when hiredis has parsed as many
replies as were sent. Round trips from many coroutines share the connection
and are answered in order. Instead of a timer per call, one watchdog per
connection closes it when the oldest round trip is overdue.

redis-py still parses the URL (every form it knows) and serves Redis Cluster.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url

from ..errors import InvalidURL
from . import redact

Command = tuple[Any, ...]
#: An error reply (``-ERR ...``), returned in place of the reply, not raised.
ReplyError = hiredis.ReplyError
#: How often the watchdog looks at the oldest round trip, in seconds.
WATCHDOG_EVERY = 1.0

_SSL_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
#: Query options of a URL this connection understands (beside afterwork's own).
OPTIONS = frozenset(
    {
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "client_name",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
    }
)


class ConnectionLost(ConnectionError):
    """The connection closed (or was closed as overdue) before every reply came."""


class ReplyOverdue(ConnectionLost):
    """No reply within the socket timeout: the connection was given up."""


class UnsendableCommand(ValueError):
    """An argument RESP cannot carry (only bytes, str, int and float can go)."""


def _pack(command: Command) -> bytes:
    try:
        packed: bytes = hiredis.pack_command(command)
        return packed
    except (TypeError, UnicodeEncodeError) as exc:
        kinds = ", ".join(sorted({type(a).__name__ for a in command}))
        raise UnsendableCommand(
            f"cannot send {command[0]} to Redis: {exc} (its arguments are {kinds}; Redis takes "
            "bytes, str, int and float)"
        ) from None


@dataclass(frozen=True)
class Address:
    """Where a server is and how to greet it, from its URL."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a Unix socket
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    client_name: str | None = None
    connect_timeout: float = 5.0
    timeout: float = 30.0

    @classmethod
    def from_url(
        cls, url: str, *, connect_timeout: float, timeout: float, strict: bool = True
    ) -> Address:
        """``strict=False`` lets options this connection does not know pass (a cluster's
        URL goes to redis-py, which knows more)."""
        options: dict[str, Any] = dict(parse_url(url))
        unknown = sorted(set(options) - OPTIONS - _PARSED)
        if unknown and strict:
            raise InvalidURL(
                f"invalid Redis URL {redact(url)!r}: unknown option {', '.join(unknown)}; "
                f"use prefix, cluster or {', '.join(sorted(OPTIONS))}"
            )
        tls = None
        if url.startswith("rediss:"):
            try:
                tls = _tls_context(options)
            except (ValueError, OSError) as exc:
                raise InvalidURL(
                    f"invalid Redis URL {redact(url)!r}: its TLS options: {exc}"
                ) from None
        return cls(
            host=options.get("host") or "127.0.0.1",
            port=int(options.get("port") or 6379),
            path=options.get("path"),
            tls=tls,
            username=options.get("username"),
            password=options.get("password"),
            db=int(options.get("db") or 0),
            client_name=options.get("client_name"),
            connect_timeout=float(options.get("socket_connect_timeout") or connect_timeout),
            timeout=float(options.get("socket_timeout") or timeout),
        )


_PARSED = {"host", "port", "path", "username", "password", "connection_class"}


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=options.get("ssl_ca_certs"), capath=options.get("ssl_ca_path")
    )
    reqs = options.get("ssl_cert_reqs", "required")
    mode = _SSL_REQS.get(str(reqs).lower(), ssl.CERT_REQUIRED)
    check = options.get("ssl_check_hostname")
    context.check_hostname = mode != ssl.CERT_NONE if check is None else bool(check)
    context.verify_mode = mode
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    return context


class _RoundTrip:
    __slots__ = ("deadline", "future", "left", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, deadline: float) -> None:
        self.future = future
        self.left = count
        self.replies: list[Any] = []
        self.deadline = deadline


class WireConnection(asyncio.Protocol):
    """One connection; :meth:`send` is one round trip of any number of commands."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        self._waiting: deque[_RoundTrip] = deque()
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False
        #: When the last round trip was sent (the event loop's clock).
        self.last_used = self._loop.time()

    @classmethod
    async def open(cls, address: Address) -> WireConnection:
        """Connect and greet (password, database, name); OSError or ReplyError if refused."""
        loop = asyncio.get_running_loop()
        if address.path is not None:
            opening = loop.create_unix_connection(lambda: cls(address), address.path)
        else:
            opening = loop.create_connection(
                lambda: cls(address),
                address.host,
                address.port,
                ssl=address.tls,
                server_hostname=address.host if address.tls else None,
            )
        _, connection = await asyncio.wait_for(opening, address.connect_timeout)
        try:
            greeting: list[Command] = []
            if address.password is not None:
                user = () if address.username is None else (address.username,)
                greeting.append(("AUTH", *user, address.password))
            if address.db:
                greeting.append(("SELECT", address.db))
            if address.client_name:
                greeting.append(("CLIENT", "SETNAME", address.client_name))
            replies = await asyncio.wait_for(connection.send(greeting), address.connect_timeout)
            for reply in replies:
                if isinstance(reply, ReplyError):
                    raise reply
        except BaseException:
            connection.close()
            raise
        return connection

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        reader, waiting = self._reader, self._waiting
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(ConnectionLost(f"the server sent something that is not RESP: {exc}"))
                return
            if reply is False:
                return
            if not waiting:  # nothing asked for it: the stream is out of step
                self._fail(ConnectionLost("the server sent a reply nobody asked for"))
                return
            trip = waiting[0]
            trip.replies.append(reply)
            trip.left -= 1
            if trip.left == 0:
                waiting.popleft()
                if not trip.future.done():
                    trip.future.set_result(trip.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionLost(f"the connection closed ({exc or 'by the server'})"))

    # -- round trips ------------------------------------------------------------------

    def send(self, commands: Sequence[Command], block: float = 0.0) -> asyncio.Future[list[Any]]:
        """Send ``commands``; the future gets their replies (errors as :data:`ReplyError`).

        ``block``: how long a blocking command among them may hold the reply back,
        on top of the connection's timeout.
        """
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        if not commands:
            future.set_result([])
            return future
        if self.closed or self._transport is None:
            future.set_exception(ConnectionLost("the connection is closed"))
            return future
        # Packed before anything is queued: a command that cannot be sent must not
        # leave a round trip waiting for a reply that will never come.
        if len(commands) == 1:
            packed = _pack(commands[0])
        else:
            packed = b"".join([_pack(c) for c in commands])
        now = self._loop.time()
        self.last_used = now
        self._waiting.append(_RoundTrip(future, len(commands), now + self.address.timeout + block))
        self._transport.write(packed)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(WATCHDOG_EVERY, self._watch)
        return future

    def _watch(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        if self._loop.time() > self._waiting[0].deadline:
            self._fail(
                ReplyOverdue(f"no reply within {self.address.timeout:g}s; closed the connection")
            )
            return
        self._watchdog = self._loop.call_later(WATCHDOG_EVERY, self._watch)

    def _fail(self, exc: ConnectionLost) -> None:
        self.close()
        waiting, self._waiting = self._waiting, deque()
        for trip in waiting:
            if not trip.future.done():
                trip.future.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            self._transport.close()
