"""Engines the tests need: reachable, or a skip (a failure under AFTERWORK_REQUIRE_SERVICES=1).

On a laptop without Redis or PostgreSQL the tests that need them skip with a
reason naming the engine; CI sets ``AFTERWORK_REQUIRE_SERVICES=1`` so that an
engine that is down fails the run instead.
"""

from __future__ import annotations

import os
import socket
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

from afterwork.brokers import redact

REQUIRE_SERVICES_ENV = "AFTERWORK_REQUIRE_SERVICES"
_DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "postgresql": 5432, "postgres": 5432}
_DEFAULT_PORTS |= {"amqp": 5672, "amqps": 5671}


def service_unavailable(engine: str, url: str, reason: object) -> NoReturn:
    """Skip the test because ``engine`` cannot be used, or fail if services are required."""
    message = f"{engine} is not available at {redact(url)}: {reason}"
    if os.environ.get(REQUIRE_SERVICES_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_SERVICES_ENV}=1 requires it)", pytrace=False)
    pytest.skip(message)


def require_service(engine: str, url: str, timeout: float = 1.0) -> None:
    """Make sure the server behind ``url`` accepts connections, else skip (or fail)."""
    parts = urlsplit(url)
    try:
        if parts.scheme == "unix":
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(timeout)
                sock.connect(parts.path)
        elif parts.port or parts.scheme in _DEFAULT_PORTS:
            address = (parts.hostname or "localhost", parts.port or _DEFAULT_PORTS[parts.scheme])
            socket.create_connection(address, timeout=timeout).close()
    except OSError as exc:
        service_unavailable(engine, url, exc)
