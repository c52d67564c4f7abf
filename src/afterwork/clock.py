"""The one source of time for brokers, workers and schedules.

Everything that compares times (delays, backoff, leases, result expiry) asks
a :class:`Clock`, so tests can move time forward with :class:`ManualClock`
instead of sleeping.
"""

from __future__ import annotations

import time


class Clock:
    """Wall-clock time as seconds since the epoch (UTC)."""

    def now(self) -> float:
        return time.time()


class ManualClock(Clock):
    """A clock that only moves when told to; for tests."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def set(self, timestamp: float) -> None:
        self._now = timestamp


SYSTEM_CLOCK = Clock()
