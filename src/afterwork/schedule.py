"""Durations and points in time given by users: ``"30s"``, ``"5m"``, timedeltas, datetimes.

Parsing happens where the user gives the value (decoration, ``using``), so a
typo fails at once with a message that shows the accepted forms.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

DurationLike = int | float | str | timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_FORMS = '"30s", "5m", "1h", "1d", "1h30m", "250ms", a number of seconds or a timedelta'


def parse_duration(value: DurationLike, *, what: str = "duration") -> float:
    """Return ``value`` in seconds; raise ``ValueError`` naming the input if it is not one.

    Negative durations are refused: nothing in afterwork waits a negative time.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be {_FORMS}; got {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip().lower(), what)
    else:
        raise ValueError(f"{what} must be {_FORMS}; got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} must be zero or more seconds; got {value!r}")
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
        raise ValueError(f"{what} {text!r} is not understood; use {_FORMS}")
    return sign * total


def to_timestamp(when: datetime, *, what: str = "run_at") -> float:
    """Seconds since the epoch for an aware datetime; naive ones are refused as ambiguous."""
    if not isinstance(when, datetime):
        raise ValueError(f"{what} must be a timezone-aware datetime; got {when!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(
            f"{what} {when.isoformat()} has no time zone; pass an aware datetime, "
            "e.g. datetime.now(timezone.utc) + timedelta(minutes=5)"
        )
    return when.timestamp()
