"""A Redis server as the Redis broker talks to it, from any event loop and thread.

Connections belong to the loop they were made on, so each running loop gets
its own, made on first use and closed with the broker or when its loop shuts
down. On one server they are afterwork's lean :class:`WireConnection`; on a
cluster, redis-py's client, which knows the slots. Commands go in pipelines;
scripts run as functions of one library (``FCALL``) on a single Redis 7, by
``EVALSHA`` elsewhere, and when the server says it has none (a restarted server
without persistence forgets them) they are loaded and the refused calls sent
again. Errors come out
as afterwork's, naming the server without its password.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import threading
from collections.abc import AsyncGenerator, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import BrokerConnectionError, BrokerError, InvalidURL
from . import redact
from .redis_wire import (
    Address,
    ConnectionLost,
    ReplyError,
    ReplyOverdue,
    UnsendableCommand,
    WireConnection,
)
from .sql import load_queries

#: Keys start with this unless the URL says ``?prefix=...``.
DEFAULT_PREFIX = "afterwork"
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SOCKET_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
#: A connection idle this long is asked for a PING before it is used again: one
#: whose peer vanished (a NAT or load balancer dropped it) would otherwise hold
#: the call for the whole socket timeout.
HEALTH_CHECK_AFTER = 30.0
#: A round trip that finds no server (refused, reset: a restart) is tried again
#: after each of these pauses, on a new connection.
RETRY_BACKOFF = (0.05, 0.2, 0.5)
#: Error replies that say the server cannot serve now, not that the call is wrong.
_UNAVAILABLE = ("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "READONLY")

_SOURCE = load_queries("redis.lua")
_BODIES = {name: body for name, body in _SOURCE.items() if name != "common"}
#: The scripts of ``redis.lua`` by name, for ``EVALSHA``: the common part in front.
SCRIPTS = {name: f"{_SOURCE['common']}\nbind(KEYS, ARGV)\n{body}" for name, body in _BODIES.items()}
SHA = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in SCRIPTS.items()}
#: The same as one function library, for ``FCALL``: named after its digest, so
#: apps of different afterwork versions on one server each find their own.
_LIBRARY_ID = "afterwork_" + hashlib.sha1("".join(SCRIPTS.values()).encode()).hexdigest()[:16]
FUNCTIONS = {name: f"{_LIBRARY_ID}_{name}" for name in _BODIES}
LIBRARY = "\n".join(
    [
        f"#!lua name={_LIBRARY_ID}",
        _SOURCE["common"],
        *(
            f"redis.register_function('{FUNCTIONS[name]}', function(KEYS, ARGV)\n"
            f"bind(KEYS, ARGV)\n{body}\nend)"
            for name, body in _BODIES.items()
        ),
    ]
)

Command = tuple[Any, ...]


def parse_redis_url(url: str) -> tuple[str, str, bool]:
    """Split afterwork's options off a Redis URL: (URL for redis-py, key prefix, cluster)."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise InvalidURL(f"invalid Redis URL {redact(url)!r}: the port is not a number") from None
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise InvalidURL(
            f"invalid Redis URL {redact(url)!r}: the path must be a database number, as in "
            "redis://localhost:6379/0"
        )
    prefix, cluster, rest = DEFAULT_PREFIX, False, []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "prefix":
            if not _PREFIX.match(value):
                raise InvalidURL(
                    f"invalid Redis URL {redact(url)!r}: prefix must be 1 to 64 letters, "
                    f"digits, '_', '.' or '-'; got {value!r}"
                )
            prefix = value
        elif name == "cluster":
            if value.lower() not in ("yes", "true", "1", "no", "false", "0"):
                raise InvalidURL(f"invalid Redis URL {redact(url)!r}: cluster must be yes or no")
            cluster = value.lower() in ("yes", "true", "1")
        else:
            rest.append((name, value))
    return _with_query(parts, urlencode(rest)), prefix, cluster


def _with_query(parts: SplitResult, query: str) -> str:
    """The URL with another query, keeping its ``//``: ``urlunsplit`` drops it when the
    host is empty (``unix:///run/redis.sock`` would become ``unix:/run/redis.sock``,
    which redis-py 8 refuses)."""
    url = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return url + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


class _LoopState:
    """What one event loop uses: a shared connection for round trips, idle
    connections for blocking commands, or (on a cluster) redis-py's client."""

    __slots__ = ("closed", "cluster_client", "conn", "idle", "loop_time", "opening")

    def __init__(self) -> None:
        self.conn: WireConnection | None = None
        self.opening: asyncio.Future[WireConnection] | None = None
        self.idle: list[WireConnection] = []
        self.cluster_client: Any = None
        self.loop_time = asyncio.get_running_loop().time
        #: Once closed, a connection that comes back from use (or from opening) is
        #: closed instead of kept.
        self.closed = False

    def opened(self, opening: asyncio.Future[WireConnection]) -> None:
        """The opening is over: the next caller without a connection starts another."""
        self.opening = None
        _retrieve(opening)  # its waiters may all have gone

    async def aclose(self) -> None:
        self.closed = True
        connections = [*self.idle, *([self.conn] if self.conn is not None else [])]
        self.idle, self.conn = [], None
        for connection in connections:
            connection.close()
        if self.cluster_client is not None:
            with contextlib.suppress(Exception):
                await self.cluster_client.aclose()


class RedisConnection:
    """One Redis server (or cluster) for one broker: connections per loop, round trips,
    errors.

    On one server, every event loop gets one :class:`WireConnection` that all
    its round trips share, and more for blocking commands (each holds its
    connection while it blocks). On a cluster, redis-py routes each command to
    its node. Either way replies come back as Redis sent them (bytes, lists,
    numbers), whatever the command.
    """

    def __init__(self, url: str, client_url: str, *, cluster: bool) -> None:
        self.url = url  # as the user gave it, for messages (redacted)
        self.cluster = cluster
        self._client_url = client_url
        self._address = Address.from_url(
            client_url, connect_timeout=CONNECT_TIMEOUT, timeout=SOCKET_TIMEOUT, strict=not cluster
        )
        self._lock = threading.Lock()
        self._loops: dict[asyncio.AbstractEventLoop, tuple[_LoopState, AsyncGenerator[None]]] = {}
        self._scripts_loaded = False
        #: Scripts are called as functions (``FCALL``), not by ``EVALSHA``.
        self.functions = False

    def script(self, name: str, keys: Sequence[str], *args: Any) -> Command:
        """The command that runs script ``name`` of ``redis.lua``."""
        if self.functions:
            return ("FCALL", FUNCTIONS[name], len(keys), *keys, *args)
        return ("EVALSHA", SHA[name], len(keys), *keys, *args)

    async def _state(self) -> _LoopState:
        """This event loop's connections.

        Each comes with an async generator the loop closes when it shuts down
        (``asyncio.run`` does), which closes the connections with their loop.
        """
        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is None:
            with self._lock:
                for stale in [lp for lp in self._loops if lp.is_closed()]:
                    del self._loops[stale]  # closed without shutting down: nothing to do
                entry = self._loops.get(loop)
                created = entry is None
                if entry is None:
                    state = _LoopState()
                    entry = self._loops[loop] = (state, self._closer(loop, state))
            if created:
                await anext(entry[1])
        return entry[0]

    async def _closer(
        self, loop: asyncio.AbstractEventLoop, state: _LoopState
    ) -> AsyncGenerator[None]:
        try:
            yield
        finally:
            with self._lock:
                if self._loops.get(loop, (None,))[0] is state:
                    del self._loops[loop]
            await state.aclose()

    async def _open(self) -> WireConnection:
        try:
            return await WireConnection.open(self._address)
        except ReplyError as exc:  # refused the password or the database
            raise RedisRefused(str(exc)) from None

    async def _shared(self, state: _LoopState) -> WireConnection:
        conn = state.conn
        if conn is not None and not conn.closed:
            if state.loop_time() - conn.last_used < HEALTH_CHECK_AFTER:
                return conn
            if await self._answers(conn):  # idle a while: a dead peer would hang the call
                return conn
        if state.opening is None:  # one opening at a time; the others wait for it
            state.opening = opening = asyncio.ensure_future(self._open())
            opening.add_done_callback(state.opened)
        # Shielded for every waiter: one cancelled must not cancel the others' opening.
        conn = await asyncio.shield(state.opening)
        if state.closed:
            conn.close()
            raise ConnectionLost("the connection was closed with the broker")
        state.conn = conn
        return conn

    async def _answers(self, conn: WireConnection) -> bool:
        """Whether an idle connection still answers a ``PING`` (closed if it does not)."""
        try:
            await asyncio.wait_for(conn.send([("PING",)]), self._address.connect_timeout)
            return True
        except OSError:  # TimeoutError included
            conn.close()
            return False

    async def client(self) -> Any:
        """This event loop's redis-py cluster client (only on a cluster)."""
        state = await self._state()
        if state.cluster_client is None:
            state.cluster_client = RedisCluster.from_url(
                self._client_url,
                max_connections=1000,
                socket_connect_timeout=self._address.connect_timeout,
                socket_timeout=self._address.timeout,
                socket_keepalive=True,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            )
        return state.cluster_client

    async def connect(self) -> None:
        """Make sure the server answers (and has the scripts); raise BrokerConnectionError."""
        entry = self._loops.get(asyncio.get_running_loop())
        if entry is not None and self._scripts_loaded:
            state = entry[0]
            if state.cluster_client is not None or (state.conn and not state.conn.closed):
                return
        try:
            await self.send([("PING",)])
            if not self._scripts_loaded:
                await self._load_scripts()
        except (RedisError, RedisRefused, ReplyError, OSError, ValueError, TypeError) as exc:
            with self._lock:
                entry = self._loops.pop(asyncio.get_running_loop(), None)
            if entry is not None:
                await entry[1].aclose()
            raise BrokerConnectionError(
                f"cannot connect to Redis at {redact(self.url)}: {exc}; check the address, "
                "the password and that the server is running"
            ) from exc

    async def _load_scripts(self) -> None:
        """Load the scripts for ``EVALSHA`` and, on a single Redis 7, as a function library.

        Both, so a call made before the library was known (or after it failed to
        load once) still runs; loading is one round trip.
        """
        if self.cluster:  # redis-py loads them on every node
            client = await self.client()
            replies = [await client.script_load(text) for text in SCRIPTS.values()]
        else:
            loads = [("SCRIPT", "LOAD", text) for text in SCRIPTS.values()]
            library, *replies = await self.send([("FUNCTION", "LOAD", "REPLACE", LIBRARY), *loads])
            self.functions = not isinstance(library, ReplyError)  # before Redis 7: EVALSHA
        for name, sha in zip(SCRIPTS, replies, strict=True):
            if isinstance(sha, Exception):
                raise sha
            if _text(sha) != SHA[name]:  # pragma: no cover (Redis and hashlib agree on SHA1)
                raise BrokerError(f"Redis gave script {name} the digest {sha!r}, not {SHA[name]}")
        self._scripts_loaded = True

    async def close(self) -> None:
        with self._lock:
            entries, self._loops = self._loops, {}
            self._scripts_loaded = False
        current = asyncio.get_running_loop()
        for loop, (_, closer) in entries.items():
            with contextlib.suppress(Exception):
                if loop is current:
                    await closer.aclose()
                elif loop.is_running():
                    done = asyncio.run_coroutine_threadsafe(closer.aclose(), loop)
                    await asyncio.wait_for(asyncio.wrap_future(done), 1.0)

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Turn connection and server errors into afterwork's, naming the server without
        its password."""
        try:
            yield
        except BrokerError:
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError, RedisRefused) as exc:
            raise BrokerConnectionError(
                f"lost the connection to Redis at {redact(self.url)} while {action}: {exc}"
            ) from exc
        except ReplyError as exc:
            if str(exc).startswith(_UNAVAILABLE):  # loading, busy, failing over: for now
                raise BrokerConnectionError(
                    f"Redis at {redact(self.url)} is not available while {action}: {exc}"
                ) from exc
            raise BrokerError(f"Redis at {redact(self.url)} failed while {action}: {exc}") from exc
        except (RedisError, UnsendableCommand) as exc:
            raise BrokerError(f"Redis at {redact(self.url)} failed while {action}: {exc}") from exc

    async def pipeline(
        self, commands: Iterable[Command], then: Sequence[Command] = ()
    ) -> list[Any]:
        """Run ``commands`` and then ``then`` in one round trip; return the commands' replies.

        ``commands`` given as an iterator (not a sequence) are written one by one as
        they are built, so Redis runs the first while the next is being made:
        big script calls cost the time of the slower side, not of both.
        A cluster pipeline runs each node's part in parallel, so there ``then``
        (wake-ups) waits for the commands, or a worker could wake before its job exists.
        """
        if self.cluster:
            commands = list(commands)
            results = await self.send(commands)
        elif isinstance(commands, Sequence):
            results = (await self.send([*commands, *then]))[: len(commands)]
        else:
            commands, results = await self._send_as_built(commands, then)
        refused = [i for i, r in enumerate(results) if _no_script(r)]
        if refused:  # the server lost its scripts (a restart): load them, send those again
            await self._load_scripts()
            again = await self.send([commands[i] for i in refused])
            for i, result in zip(refused, again, strict=True):
                results[i] = result
        if self.cluster or refused:
            await self.send(then)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _send_as_built(
        self, commands: Iterable[Command], then: Sequence[Command]
    ) -> tuple[list[Command], list[Any]]:
        source = iter(commands)
        sent: list[Command] = []
        replies: list[asyncio.Future[list[Any]]] = []
        try:
            conn = await self._shared(await self._state())
            for command in source:
                sent.append(command)
                replies.append(conn.send((command,)))
                replies[-1].add_done_callback(_retrieve)
            replies.append(conn.send(then))
            results: list[Any] = []
            for reply in replies:
                results += await reply
        except ReplyOverdue:
            raise
        except OSError:  # the connection went: all of it again (enqueue stores a job once)
            sent += source
            results = await self.send([*sent, *then])
        return sent, results[: len(sent)]

    async def send(self, commands: Sequence[Command]) -> list[Any]:
        """One round trip (none for no commands); error replies come back as replies."""
        if not commands:
            return []
        if self.cluster:
            pipe = (await self.client()).pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            results: list[Any] = await pipe.execute(raise_on_error=False)
            return results
        state = await self._state()
        for backoff in (*RETRY_BACKOFF, None):
            try:
                conn = await self._shared(state)
                return await conn.send(commands)
            except ReplyOverdue:  # waited the whole timeout already: not again
                raise
            except OSError:  # refused or reset: the server may be restarting
                if backoff is None or state.closed:
                    raise
                await asyncio.sleep(backoff)
        raise AssertionError("unreachable")  # pragma: no cover

    async def block(
        self, command: Command, timeout: float, then: Sequence[Command] = ()
    ) -> list[Any]:
        """A blocking command (``BLPOP``) that may wait ``timeout`` seconds, and ``then``
        right behind it, so Redis runs them the moment it returns: their replies.

        On one server it holds a connection of its own while it blocks; one that is
        cancelled meanwhile is closed, as its reply would come to nobody.
        """
        if self.cluster:
            reply = await (await self.client()).execute_command(*command)
            return [reply, *(await self.pipeline(then))]
        state = await self._state()
        conn = await self._idle(state)
        try:
            replies = await conn.send([command, *then], block=timeout)
        except BaseException:
            conn.close()
            raise
        if state.closed:
            conn.close()
        elif not conn.closed:
            state.idle.append(conn)
        for reply in replies[1:]:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _idle(self, state: _LoopState) -> WireConnection:
        """A connection for a blocking command: an idle one that still answers, or a new one."""
        while state.idle:
            conn = state.idle.pop()
            if conn.closed:  # the server closed it while idle
                continue
            fresh = state.loop_time() - conn.last_used < HEALTH_CHECK_AFTER
            if fresh or await self._answers(conn):
                return conn
        return await self._open()

    async def keys_matching(self, pattern: str) -> list[bytes]:
        """Every key that matches ``pattern`` (``SCAN``, on every node of a cluster)."""
        if self.cluster:
            client = await self.client()
            return [k async for k in client.scan_iter(match=pattern, count=1000)]
        found: list[bytes] = []
        cursor = b"0"
        while True:
            [(cursor, keys)] = await self.pipeline(
                [("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)]
            )
            found += keys
            if int(cursor) == 0:
                return found


class RedisRefused(Exception):
    """The server refused the greeting (a wrong password, a database it does not have)."""


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a round trip's failure seen: its caller may have gone (cancelled) or be
    waiting on another that failed first."""
    if not future.cancelled():
        future.exception()


def _no_script(reply: Any) -> bool:
    """Whether a reply says the server does not have the script (or function)."""
    if isinstance(reply, NoScriptError):
        return True
    return isinstance(reply, ReplyError) and str(reply).startswith(
        ("NOSCRIPT", "ERR Function not found")
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
