"""Durations and points in time given by users: ``"30s"``, ``"5m"``, timedeltas, datetimes.

Parsing happens where the user gives the value (decoration, ``using``), so a
typo fails at once with a message that shows the accepted forms.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import ConfigurationError, TaskConfigurationError

DurationLike = int | float | str | timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_FORMS = '"30s", "5m", "1h", "1d", "1h30m", "250ms", a number of seconds or a timedelta'


def parse_duration(value: DurationLike, *, what: str = "duration") -> float:
    """Return ``value`` in seconds; raise ``ConfigurationError`` naming the input if it is not one.

    Negative durations are refused: nothing in afterwork waits a negative time.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"{what} must be {_FORMS}; got {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip().lower(), what)
    else:
        raise ConfigurationError(f"{what} must be {_FORMS}; got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"{what} must be zero or more seconds; got {value!r}")
    return seconds


def _parse_text(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    # A sign is read so that "-5s" is refused as negative, not as not understood.
    sign, start = (-1.0, 1) if text.startswith("-") else (1.0, 0)
    pos, total = start, 0.0
    for match in _PART.finditer(text, start):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == start or pos != len(text):
        raise ConfigurationError(f"{what} {text!r} is not understood; use {_FORMS}")
    return sign * total


def to_timestamp(when: datetime, *, what: str = "run_at") -> float:
    """Seconds since the epoch for an aware datetime; naive ones are refused as ambiguous."""
    if not isinstance(when, datetime):
        raise ConfigurationError(f"{what} must be a timezone-aware datetime; got {when!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ConfigurationError(
            f"{what} {when.isoformat()} has no time zone; pass an aware datetime, "
            "e.g. datetime.now(timezone.utc) + timedelta(minutes=5)"
        )
    return when.timestamp()


# -- recurring schedules ------------------------------------------------------------------


class Interval:
    """Every ``seconds`` of elapsed time, on a grid anchored at the epoch.

    The grid makes every scheduler process compute the same fire times, so a
    fire can be claimed once however many schedulers run; the first run waits
    for the first point of the grid after start.
    """

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __repr__(self) -> str:
        return f"Interval({self.seconds})"

    def describe(self) -> str:
        return f"every {format_duration(self.seconds)}"

    def next_after(self, timestamp: float) -> float:
        return (math.floor(timestamp / self.seconds) + 1) * self.seconds

    def latest_at_or_before(self, timestamp: float) -> float:
        return math.floor(timestamp / self.seconds) * self.seconds


class Cron:
    """A standard five-field cron expression in a time zone (UTC unless given).

    Evaluated by cronsim, which follows Debian cron across daylight saving
    changes: a time skipped by the spring change runs once, right after it; a
    time repeated by the autumn change runs once; expressions with a wildcard
    hour keep firing by elapsed time.
    """

    __slots__ = ("expression", "tz")

    def __init__(self, expression: str, tz: ZoneInfo) -> None:
        self.expression = expression
        self.tz = tz

    def __repr__(self) -> str:
        return f"Cron({self.expression!r}, {self.tz.key!r})"

    def describe(self) -> str:
        return f"cron {self.expression} ({self.tz.key})"

    def next_after(self, timestamp: float) -> float:
        start = datetime.fromtimestamp(timestamp, self.tz)
        return next(CronSim(self.expression, start)).timestamp()

    def latest_at_or_before(self, timestamp: float) -> float:
        # cronsim's reverse walk is strictly before; nudge so "at" counts.
        start = datetime.fromtimestamp(timestamp + 0.000_001, self.tz)
        return next(CronSim(self.expression, start, reverse=True)).timestamp()


Schedule = Interval | Cron


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_schedule(
    *, every: DurationLike | None, cron: str | None, tz: str | tzinfo | None, where: str
) -> Schedule:
    """Check a periodic schedule where it is declared; every mistake raises here."""
    if (every is None) == (cron is None):
        raise TaskConfigurationError(
            f"{where}: give exactly one of every=... (e.g. every='30m') or cron=... "
            "(e.g. cron='0 2 * * *')"
        )
    if every is not None:
        if tz is not None:
            raise TaskConfigurationError(
                f"{where}: tz applies to cron schedules; intervals are elapsed time"
            )
        seconds = parse_duration(every, what=f"{where}: every")
        if seconds <= 0:
            raise TaskConfigurationError(
                f"{where}: every must be more than 0 seconds; got {every!r}"
            )
        return Interval(seconds)
    assert cron is not None
    zone = parse_time_zone(tz, where)
    if not isinstance(cron, str):
        raise TaskConfigurationError(f"{where}: cron must be a string like '0 2 * * *'")
    try:
        CronSim(cron, datetime.now(zone))
    except CronSimError as exc:
        raise TaskConfigurationError(
            f"{where}: cron {cron!r} is not valid ({exc}); use five fields: minute hour "
            "day-of-month month day-of-week, e.g. '0 2 * * *' (a date that never exists, "
            "such as 30 February, is refused too)"
        ) from None
    return Cron(cron, zone)


def parse_time_zone(tz: str | tzinfo | None, where: str) -> ZoneInfo:
    if tz is None:
        return ZoneInfo("UTC")
    if isinstance(tz, ZoneInfo):
        return tz
    if not isinstance(tz, str):
        raise TaskConfigurationError(
            f"{where}: tz must be an IANA time zone name such as 'Europe/Paris'; got {tz!r}"
        )
    if re.fullmatch(r"(UTC|GMT)?\s*[+-]\d{1,2}(:?\d{2})?", tz.strip()):
        raise TaskConfigurationError(
            f"{where}: tz {tz!r} is a fixed offset, which is wrong half the year wherever "
            "daylight saving applies; use an IANA name such as 'Europe/Paris' or 'UTC'"
        )
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise TaskConfigurationError(
            f"{where}: unknown time zone {tz!r}; use an IANA name such as 'Europe/Paris', "
            "'America/New_York' or 'UTC'"
        ) from None
