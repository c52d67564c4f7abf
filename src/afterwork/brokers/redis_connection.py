"""A Redis server as the Redis broker talks to it, from any event loop and thread.

redis-py's asyncio clients belong to the loop they were made on, so there is
one client per running loop, made on first use and closed with the broker or
when its loop shuts down. Commands go in pipelines; scripts run by ``EVALSHA``
straight from them (a redis-py ``Script`` in a pipeline costs a ``SCRIPT
EXISTS`` round trip on every execution), and after ``NOSCRIPT`` (a restarted
server forgets its scripts) they are loaded and the refused calls sent again.
redis-py's errors come out as afterwork's, naming the server without its password.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import threading
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import BrokerConnectionError, BrokerError, InvalidURL
from . import redact
from .sql import load_queries

#: Keys start with this unless the URL says ``?prefix=...``.
DEFAULT_PREFIX = "afterwork"
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SOCKET_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0

_SOURCE = load_queries("redis.lua")
#: The scripts of ``redis.lua`` by name, each with the common part in front.
SCRIPTS = {
    name: f"{_SOURCE['common']}\n{body}" for name, body in _SOURCE.items() if name != "common"
}
SHA = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in SCRIPTS.items()}

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
    return parts._replace(query=urlencode(rest)).geturl(), prefix, cluster


class RedisConnection:
    """One Redis server (or cluster) for one broker: clients per loop, pipelines, errors."""

    def __init__(self, url: str, client_url: str, *, cluster: bool) -> None:
        self.url = url  # as the user gave it, for messages (redacted)
        self.cluster = cluster
        self._client_url = client_url
        self._lock = threading.Lock()
        self._clients: dict[asyncio.AbstractEventLoop, tuple[Any, AsyncGenerator[None, None]]] = {}
        self._scripts_loaded = False

    def _new_client(self) -> Any:
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": SOCKET_TIMEOUT,
            "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        }
        if not self._client_url.startswith("unix:"):
            options["socket_keepalive"] = True
        if self.cluster:
            return RedisCluster.from_url(self._client_url, max_connections=1000, **options)
        return aioredis.Redis.from_url(self._client_url, health_check_interval=30, **options)

    async def client(self) -> Any:
        """This event loop's client.

        Each comes with an async generator the loop closes when it shuts down
        (``asyncio.run`` does), which closes the client with its loop.
        """
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            with self._lock:
                for stale in [lp for lp in self._clients if lp.is_closed()]:
                    del self._clients[stale]  # closed without shutting down: nothing to do
                entry = self._clients.get(loop)
                created = entry is None
                if entry is None:
                    client = self._new_client()
                    entry = self._clients[loop] = (client, self._closer(loop, client))
            if created:
                await anext(entry[1])
        return entry[0]

    async def _closer(
        self, loop: asyncio.AbstractEventLoop, client: Any
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                if self._clients.get(loop, (None,))[0] is client:
                    del self._clients[loop]
            with contextlib.suppress(Exception):
                await client.aclose()

    async def connect(self) -> None:
        """Make sure the server answers (and has the scripts); raise BrokerConnectionError."""
        if asyncio.get_running_loop() in self._clients and self._scripts_loaded:
            return
        try:
            client = await self.client()
            await asyncio.wait_for(client.ping(), CONNECT_TIMEOUT)
            if not self._scripts_loaded:
                await self._load_scripts(client)
        except (RedisError, OSError, ValueError, TypeError) as exc:
            with self._lock:
                entry = self._clients.pop(asyncio.get_running_loop(), None)
            if entry is not None:
                await entry[1].aclose()
            raise BrokerConnectionError(
                f"cannot connect to Redis at {redact(self.url)}: {exc}; check the address, "
                "the password and that the server is running"
            ) from exc

    async def _load_scripts(self, client: Any) -> None:
        for name, text in SCRIPTS.items():
            sha = await client.script_load(text)
            if sha != SHA[name]:  # pragma: no cover (Redis and hashlib agree on SHA1)
                raise BrokerError(f"Redis gave script {name} the digest {sha}, not {SHA[name]}")
        self._scripts_loaded = True

    async def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
            self._scripts_loaded = False
        current = asyncio.get_running_loop()
        for loop, (_, closer) in clients.items():
            with contextlib.suppress(Exception):
                if loop is current:
                    await closer.aclose()
                elif loop.is_running():
                    done = asyncio.run_coroutine_threadsafe(closer.aclose(), loop)
                    await asyncio.wait_for(asyncio.wrap_future(done), 1.0)

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Turn redis-py's errors into afterwork's, naming the server without its password."""
        try:
            yield
        except BrokerError:
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise BrokerConnectionError(
                f"lost the connection to Redis at {redact(self.url)} while {action}: {exc}"
            ) from exc
        except RedisError as exc:
            raise BrokerError(f"Redis at {redact(self.url)} failed while {action}: {exc}") from exc

    async def pipeline(
        self, commands: Sequence[Command], then: Sequence[Command] = ()
    ) -> list[Any]:
        """Run ``commands`` and then ``then`` in one round trip; return the commands' replies.

        A cluster pipeline runs each node's part in parallel, so there ``then``
        (wake-ups) waits for the commands, or a worker could wake before its job exists.
        """
        client = await self.client()
        if self.cluster:
            results = await self.send(client, commands)
        else:
            results = (await self.send(client, [*commands, *then]))[: len(commands)]
        refused = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if refused:  # the server lost its scripts (a restart): load them, send those again
            await self._load_scripts(client)
            again = await self.send(client, [commands[i] for i in refused])
            for i, result in zip(refused, again, strict=True):
                results[i] = result
        if self.cluster or refused:
            await self.send(client, then)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    @staticmethod
    async def send(client: Any, commands: Sequence[Command]) -> list[Any]:
        """One round trip (none for no commands); errors come back as replies."""
        if not commands:
            return []
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results
