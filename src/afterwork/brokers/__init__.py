"""Brokers by URL scheme, imported only when used so each engine stays an optional extra."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidURL, MissingDependency
from .base import (
    Broker,
    Outcome,
    OutcomeKind,
    QueueStats,
    ScheduleState,
    WorkerInfo,
    redact,
)

# scheme -> (module, class, extra that installs its driver), in the order errors list them
_ENGINES: dict[str, tuple[str, str, str | None]] = {
    "sqlite": ("sqlite", "SQLiteBroker", None),
    "memory": ("memory", "MemoryBroker", None),
    "redis": ("redis", "RedisBroker", "redis"),
    "rediss": ("redis", "RedisBroker", "redis"),
    "unix": ("redis", "RedisBroker", "redis"),
}
#: Engines that are planned but not built: their URLs get a clear "not yet".
_COMING = ("postgresql", "postgres", "amqp", "amqps")


def broker_class(url: str) -> type[Broker]:
    """The broker class for a URL; raise ``InvalidURL`` or ``MissingDependency`` at once."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    written = url.partition(":")[0]
    if not scheme and written in _ENGINES:
        example = "sqlite:///jobs.db" if written == "sqlite" else f"{written}://..."
        raise InvalidURL(
            f"cannot use broker URL {redact(url)!r}: a {written} URL starts with "
            f"'{written}://', as in {example}"
        )
    known = ", ".join(f"{s}://" for s in _ENGINES)
    if scheme in _COMING:
        raise InvalidURL(f"the {scheme}:// broker is not available yet; use one of {known}")
    if scheme not in _ENGINES:
        raise InvalidURL(
            f"cannot use broker URL {redact(url)!r}: the scheme must be one of {known}"
        )
    module_name, class_name, extra = _ENGINES[scheme]
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ModuleNotFoundError as exc:
        if extra is None or (exc.name or "").startswith(__name__):
            raise
        raise MissingDependency(
            f"the {scheme}:// broker needs the {exc.name} package: pip install 'afterwork[{extra}]'"
        ) from exc
    cls: type[Broker] = getattr(module, class_name)
    return cls


def create_broker(url: str, **options: Any) -> Broker:
    return broker_class(url)(url, **options)


__all__ = [
    "Broker",
    "Outcome",
    "OutcomeKind",
    "QueueStats",
    "ScheduleState",
    "WorkerInfo",
    "broker_class",
    "create_broker",
    "redact",
]
