from __future__ import annotations

import random
from datetime import timedelta

import pytest

from afterwork import Retry, RetryPolicy


def test_the_default_policy_makes_three_attempts_from_one_second_doubling() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 3
    assert policy.base_delay == 1.0
    assert policy.factor == 2.0
    assert policy.jitter is True


def test_without_jitter_the_nth_retry_waits_base_times_factor_to_the_n_minus_one() -> None:
    policy = RetryPolicy(base_delay=2, factor=2, jitter=False)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]


def test_the_backoff_to_the_power_of_the_attempt_form_waits_3_9_27() -> None:
    policy = RetryPolicy(base_delay=3, factor=3, jitter=False)
    assert [policy.delay(n) for n in (1, 2, 3)] == [3, 9, 27]


def test_a_factor_of_one_waits_the_same_each_time() -> None:
    policy = RetryPolicy(base_delay=5, factor=1, jitter=False)
    assert [policy.delay(n) for n in (1, 2, 3)] == [5, 5, 5]


def test_the_delay_is_capped_at_max_delay() -> None:
    policy = RetryPolicy(base_delay=10, factor=10, jitter=False, max_delay=60)
    assert [policy.delay(n) for n in (1, 2, 3)] == [10, 60, 60]


def test_the_default_cap_is_an_hour() -> None:
    assert RetryPolicy(jitter=False).delay(30) == 3600


def test_jitter_draws_between_half_and_all_of_the_delay() -> None:
    random.seed(1234)
    policy = RetryPolicy(base_delay=4, factor=2, jitter=True)
    for attempt, full in ((1, 4.0), (2, 8.0), (3, 16.0)):
        draws = [policy.delay(attempt) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in draws)
        # Jitter actually spreads jobs out rather than always picking one end.
        assert max(draws) - min(draws) > full / 4


def test_jitter_respects_the_cap() -> None:
    policy = RetryPolicy(base_delay=100, factor=10, max_delay=50, jitter=True)
    assert all(25 <= policy.delay(5) <= 50 for _ in range(100))


def test_retries_counts_the_retries_after_the_first_attempt() -> None:
    assert RetryPolicy.retries(0).max_attempts == 1
    assert RetryPolicy.retries(3).max_attempts == 4
    # The backoff stays the default one.
    assert RetryPolicy.retries(3).base_delay == RetryPolicy().base_delay


@pytest.mark.parametrize("count", [-1, 1.5, "3", True])
def test_retries_must_be_a_whole_number_of_zero_or_more(count: object) -> None:
    with pytest.raises(ValueError, match="retries must be an int of 0 or more"):
        RetryPolicy.retries(count)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.0}, "max_attempts"),
        ({"base_delay": -1}, "base_delay"),
        ({"max_delay": -1}, "max_delay"),
        ({"factor": 0.5}, "factor"),
    ],
)
def test_a_policy_that_cannot_work_is_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_retry_without_a_delay_leaves_the_wait_to_the_policy() -> None:
    exc = Retry()
    assert exc.delay is None
    assert str(exc) == "retry requested"


@pytest.mark.parametrize(
    ("delay", "seconds"), [("30s", 30.0), (5, 5.0), (timedelta(minutes=1), 60.0), (0, 0.0)]
)
def test_retry_takes_a_delay_in_any_duration_form(delay: object, seconds: float) -> None:
    assert Retry("rate limited", delay=delay).delay == seconds  # type: ignore[arg-type]


def test_retry_with_a_bad_delay_fails_where_it_is_raised() -> None:
    with pytest.raises(ValueError, match="Retry delay"):
        Retry(delay="soon")
