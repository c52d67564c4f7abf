"""When a failed job runs again: the policy, and ``Retry`` for asking from inside a task."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import ConfigurationError
from .schedule import DurationLike, parse_duration

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BASE_DELAY = 1.0
DEFAULT_BACKOFF_FACTOR = 2.0
DEFAULT_MAX_DELAY = 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and backoff: the n-th retry waits ``base_delay * factor ** (n - 1)`` seconds.

    With ``jitter`` the wait is drawn between half and all of that, so jobs that
    failed together do not come back together. ``max_delay`` caps the wait.
    ``RetryPolicy(max_attempts=4, base_delay=3, factor=3, jitter=False)`` waits
    3, 9, 27 s: the ``backoff ** retry`` form.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay: float = DEFAULT_BASE_DELAY
    factor: float = DEFAULT_BACKOFF_FACTOR
    jitter: bool = True
    max_delay: float = DEFAULT_MAX_DELAY

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigurationError(
                f"max_attempts must be an int of 1 or more; got {self.max_attempts!r}"
            )
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("base_delay and max_delay must be zero or more seconds")
        if self.factor < 1:
            raise ConfigurationError(f"factor must be 1 or more; got {self.factor!r}")

    @classmethod
    def retries(cls, count: int) -> RetryPolicy:
        """``count`` retries after the first attempt, with the default backoff."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigurationError(f"retries must be an int of 0 or more; got {count!r}")
        return cls(max_attempts=count + 1)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        raw = self.base_delay * self.factor ** max(attempt - 1, 0)
        capped = min(raw, self.max_delay)
        if self.jitter:
            return random.uniform(capped / 2, capped)
        return capped


class Retry(Exception):
    """Raise inside a task to run it again later; it counts as an attempt.

    ``raise Retry(delay="30s")`` waits that long; without a delay the task's
    policy decides. When no attempts are left the job goes to the dead-letter
    queue, with this exception as its error.
    """

    def __init__(self, reason: str = "retry requested", *, delay: DurationLike | None = None):
        super().__init__(reason)
        self.delay = None if delay is None else parse_duration(delay, what="Retry delay")
