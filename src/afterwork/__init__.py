"""afterwork: the work a web app should not make its user wait for.

Tasks after the response, an in-process queue, periodic jobs and durable job
queues with workers on many machines, under one API::

    from afterwork import Afterwork

    jobs = Afterwork()  # sqlite:///afterwork.db, or AFTERWORK_URL

    @jobs.task(retries=3, timeout=30)
    async def send_welcome_email(user_id: int) -> None: ...

    send_welcome_email.enqueue(42)
"""

from .app import Afterwork
from .background import BackgroundTask, BackgroundTasks, after_response
from .clock import Clock, ManualClock
from .errors import (
    AfterworkError,
    BrokerConnectionError,
    BrokerError,
    ConfigurationError,
    CorruptJob,
    InvalidArguments,
    InvalidURL,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobTimeout,
    MissingDependency,
    OutsideRequest,
    PayloadTooLarge,
    ResultTimeout,
    SerializationError,
    TaskConfigurationError,
    TaskQueueFull,
    TaskQueueNotRunning,
    UnknownTask,
    WorkerLost,
)
from .hooks import Hook
from .job import ErrorInfo, JobHandle, JobRecord, JobStatus
from .retry import Retry, RetryPolicy
from .task import Task
from .worker import Worker
from .workeroptions import WorkerOptions

__version__ = "0.1.0"

__all__ = [
    "Afterwork",
    "AfterworkError",
    "BackgroundTask",
    "BackgroundTasks",
    "BrokerConnectionError",
    "BrokerError",
    "Clock",
    "ConfigurationError",
    "CorruptJob",
    "ErrorInfo",
    "Hook",
    "InvalidArguments",
    "InvalidURL",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "JobTimeout",
    "ManualClock",
    "MissingDependency",
    "OutsideRequest",
    "PayloadTooLarge",
    "ResultTimeout",
    "Retry",
    "RetryPolicy",
    "SerializationError",
    "Task",
    "TaskConfigurationError",
    "TaskQueueFull",
    "TaskQueueNotRunning",
    "UnknownTask",
    "Worker",
    "WorkerLost",
    "WorkerOptions",
    "after_response",
]
