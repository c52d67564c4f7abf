"""Every exception afterwork raises, in one place.

Each class says what went wrong; the message says what to do about it. Errors
a caller made (bad options, bad arguments) also derive from ``ValueError`` or
``TypeError`` so generic handlers keep working.
"""

from __future__ import annotations


class AfterworkError(Exception):
    """Base class of every afterwork error."""


class ConfigurationError(AfterworkError, ValueError):
    """A setting, URL or option is invalid."""


class TaskConfigurationError(ConfigurationError):
    """A task was defined with options afterwork cannot honour."""


class InvalidURL(ConfigurationError):
    """A broker URL is malformed or names an unknown engine."""


class MissingDependency(AfterworkError, ImportError):
    """An optional package is needed; the message names the extra to install."""


class InvalidArguments(AfterworkError, TypeError):
    """The arguments given to ``enqueue`` do not fit the task function's signature."""


class SerializationError(AfterworkError, ValueError):
    """A value cannot cross the broker with the configured codec."""


class PayloadTooLarge(SerializationError):
    """An encoded job is bigger than the app's ``max_payload_size``."""


class UnknownTask(AfterworkError, LookupError):
    """A job names a task that this process has not registered."""


class BrokerError(AfterworkError):
    """The broker could not carry out an operation."""


class BrokerConnectionError(BrokerError, ConnectionError):
    """The broker's engine cannot be reached or opened."""


class JobNotFound(AfterworkError, LookupError):
    """No job with this id exists (it may have expired)."""


class JobTimeout(AfterworkError, TimeoutError):
    """A job ran past its task's timeout and was stopped."""


class ResultTimeout(AfterworkError, TimeoutError):
    """Waiting for a job's result took longer than the caller allowed."""


class JobCancelled(AfterworkError):
    """The job was cancelled, so it has no result."""


class JobFailed(AfterworkError):
    """The job failed for good; carries the remote error's type, message and traceback."""

    def __init__(self, job_id: str, error_type: str, message: str, traceback: str) -> None:
        super().__init__(f"job {job_id} failed with {error_type}: {message}")
        self.job_id = job_id
        self.error_type = error_type
        self.message = message
        self.traceback = traceback


class WorkerLost(AfterworkError):
    """The worker running a job stopped renewing its lease (it crashed or was killed).

    Recorded as a dead letter's error type (``afterwork.errors.WorkerLost``), never
    raised in this process: ``JobFailed.error_type`` names it.
    """


class CorruptJob(AfterworkError):
    """A stored job cannot be read (written by another version, or damaged); it is
    recorded as the error of the dead letter it becomes."""


class TaskQueueFull(AfterworkError):
    """The in-process queue holds ``max_pending`` jobs already; shed load or raise the limit."""


class TaskQueueNotRunning(AfterworkError):
    """The in-process queue is not running: it starts and stops with the app (its lifespan)."""


class OutsideRequest(AfterworkError, RuntimeError):
    """``after_response`` was called where no request is being handled."""
