from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from afterwork.schedule import parse_duration, to_timestamp


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s", 86400.0 + 7200 + 180 + 4),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("10", 10.0),
        ("2.5", 2.5),
        (" 30S ", 30.0),
        ("0s", 0.0),
    ],
)
def test_a_duration_string_is_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0.0), (45, 45.0), (0.5, 0.5), (timedelta(minutes=2), 120.0)],
)
def test_numbers_and_timedeltas_are_durations_too(
    value: int | float | timedelta, seconds: float
) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "text", ["", "s", "10x", "ten seconds", "1h 30m", "30s5", "5mm", "-", "1e"]
)
def test_a_duration_that_is_not_understood_is_refused_naming_the_input(text: str) -> None:
    with pytest.raises(ValueError, match=r"not understood|must be") as excinfo:
        parse_duration(text, what="delay")
    assert "delay" in str(excinfo.value)
    assert repr(text.strip().lower()) in str(excinfo.value) or repr(text) in str(excinfo.value)
    # The message lists the accepted forms, so the fix is obvious.
    assert '"30s"' in str(excinfo.value)


@pytest.mark.parametrize("value", [-1, -0.5, "-5", "-5s", timedelta(seconds=-1)])
def test_a_negative_duration_is_refused_naming_the_input(value: object) -> None:
    with pytest.raises(ValueError, match="zero or more seconds") as excinfo:
        parse_duration(value, what="timeout")  # type: ignore[arg-type]
    assert "timeout" in str(excinfo.value)
    assert repr(value) in str(excinfo.value) or repr(str(value)) in str(excinfo.value)


@pytest.mark.parametrize("value", [math.inf, math.nan, "inf", "nan"])
def test_an_endless_or_undefined_duration_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="zero or more seconds"):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, None, [1], object()])
def test_values_of_other_types_are_not_durations(value: object) -> None:
    with pytest.raises(ValueError, match="must be"):
        parse_duration(value)  # type: ignore[arg-type]


def test_an_aware_datetime_becomes_its_epoch_timestamp() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert to_timestamp(when) == when.timestamp()
    paris_winter = timezone(timedelta(hours=1))
    assert to_timestamp(datetime(2030, 1, 2, 4, 4, 5, tzinfo=paris_winter)) == when.timestamp()


def test_a_naive_datetime_is_refused_as_ambiguous() -> None:
    with pytest.raises(ValueError, match="no time zone") as excinfo:
        to_timestamp(datetime(2030, 1, 2, 3, 4, 5), what="run_at")
    assert "2030-01-02T03:04:05" in str(excinfo.value)


def test_something_that_is_not_a_datetime_is_refused_as_a_point_in_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware datetime"):
        to_timestamp("2030-01-02", what="run_at")  # type: ignore[arg-type]
