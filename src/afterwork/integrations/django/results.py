"""Between afterwork's job records and the framework's ``TaskResult``.

A job that runs a Django task carries an envelope as its one argument: the
backend alias, the task's import path, the result id (the job's own id), the
``run_after`` it was enqueued with, and the arguments. Its record is named by
the task's import path (``myproject.tasks.send_email``); jobs enqueued by
earlier versions are named ``django.tasks.<alias>`` (``.async`` after it for
coroutine functions).

A job's task path is data anyone who can write to the broker controls, so
:func:`find_task` never imports a module outside the project's installed apps.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from django.apps import apps
from django.conf import settings
from django.utils import timezone

from ...app import Afterwork
from ...errors import SerializationError
from ...job import JobRecord, JobStatus
from ...serialization import decode_arguments
from ._compat import InvalidTask, Task, TaskError, TaskResult, TaskResultStatus

#: How jobs of Django tasks were named before they carried the task's path.
LEGACY_PREFIX = "django.tasks."
ENVELOPE_KEYS = frozenset({"backend", "task", "id", "run_after", "args", "kwargs"})

# (Any: without django-stubs, type checkers take TextChoices members for tuples)
READY: Any = TaskResultStatus.READY
RUNNING: Any = TaskResultStatus.RUNNING
SUCCESSFUL: Any = TaskResultStatus.SUCCESSFUL
FAILED: Any = TaskResultStatus.FAILED
_STATUS = {
    JobStatus.SCHEDULED: READY,
    JobStatus.QUEUED: READY,
    JobStatus.RETRYING: READY,
    JobStatus.RUNNING: RUNNING,
    JobStatus.SUCCEEDED: SUCCESSFUL,
    JobStatus.FAILED: FAILED,
    JobStatus.CANCELLED: FAILED,
}
_FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def aware(when: datetime) -> datetime:
    return when if timezone.is_aware(when) else timezone.make_aware(when)


def as_datetime(timestamp: float | None) -> datetime | None:
    """A timestamp as Django would show it: aware in UTC, or naive local time without USE_TZ."""
    if timestamp is None:
        return None
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return when if settings.USE_TZ else timezone.make_naive(when)


def error_path(error_type: str) -> str:
    """``ValueError`` -> ``builtins.ValueError``: an importable exception path."""
    return error_type if "." in error_type else f"builtins.{error_type}"


def new_result(
    task: Task[Any, Any], result_id: str, alias: str, args: list[Any], kwargs: dict[str, Any]
) -> TaskResult[Any]:
    return TaskResult(
        task=task,
        id=result_id,
        status=READY,
        enqueued_at=None,
        started_at=None,
        finished_at=None,
        last_attempted_at=None,
        args=args,
        kwargs=kwargs,
        backend=alias,
        errors=[],
        worker_ids=[],
    )


def job_envelope(app: Afterwork, record: JobRecord) -> dict[str, Any] | None:
    """The envelope of a job that runs a Django task; None for any other job."""
    try:
        args, kwargs = decode_arguments(app.serializer, record.payload)
    except SerializationError:
        return None
    if len(args) != 1 or kwargs or not isinstance(args[0], dict):
        return None
    envelope: dict[str, Any] = args[0]
    if envelope.keys() != ENVELOPE_KEYS or envelope["id"] != record.id:
        return None
    if record.task != envelope["task"] and not record.task.startswith(LEGACY_PREFIX):
        return None
    return envelope


class TaskRefused(LookupError):
    """A task path whose module afterwork will not import: it is outside the installed apps."""


def find_task(path: str) -> Task[Any, Any] | None:
    """The framework ``Task`` at import path ``path``; None if there is none.

    The path comes from a job, which anyone who can write to the broker can
    store, so its module is imported only if it is inside the package of an
    installed app (``INSTALLED_APPS``); a module already imported is used as it
    is, and only its globals are read. For any other, :class:`TaskRefused` is
    raised without importing it. An installed app's module that fails to import
    raises what it raised.
    """
    module_name, _, attribute = path.rpartition(".")
    if not module_name or not all(part.isidentifier() for part in path.split(".")):
        return None
    module = sys.modules.get(module_name)
    if module is None:
        if not apps.apps_ready:
            raise TaskRefused(
                f"{module_name} is not imported, and Django's apps are not loaded (call "
                "django.setup() first) to tell whether it is inside an installed app"
            )
        if not _in_installed_app(module_name):
            raise TaskRefused(
                f"{module_name} is not imported, and afterwork imports a Django task's module "
                "only from the package of an installed app (INSTALLED_APPS); put the task in "
                "an installed app, or import its module where the worker starts"
            )
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
                return None  # no such module: not a task's path
            raise
    # The module's own globals: a module-level __getattr__ (a lazy loader's) could import.
    task = vars(module).get(attribute)
    return task if isinstance(task, Task) else None


def _in_installed_app(module_name: str) -> bool:
    return any(
        module_name == config.name or module_name.startswith(config.name + ".")
        for config in apps.get_app_configs()
    )


def load_task(envelope: Mapping[str, Any]) -> Task[Any, Any]:
    """The framework ``Task`` a job names, with the options it was enqueued with."""
    path = envelope["task"]
    if not isinstance(path, str):
        raise InvalidTask(f"a job's task must be an import path; got {path!r}")
    try:
        task = find_task(path)
    except TaskRefused as exc:
        raise InvalidTask(f"cannot load task {path!r}: {exc}") from None
    except Exception as exc:  # importing runs the module's code: anything can fail
        raise InvalidTask(f"cannot import task {path!r}: {exc}") from exc
    if task is None:
        raise InvalidTask(
            f"{path!r} is not a task (a function decorated with @task); refusing to run it"
        )
    run_after = envelope.get("run_after")
    return task.using(
        backend=envelope["backend"],
        run_after=as_datetime(run_after) if run_after is not None else None,
    )


def result_from_record(
    app: Afterwork, record: JobRecord, envelope: Mapping[str, Any], task: Task[Any, Any]
) -> TaskResult[Any]:
    """The framework's view of a job: status, times, errors, workers and return value."""
    status = record.status_at(app.clock.now())
    task = task.using(priority=record.priority, queue_name=record.queue)
    started = as_datetime(record.started_at)
    result: TaskResult[Any] = TaskResult(
        task=task,
        id=envelope["id"],
        status=_STATUS[status],
        enqueued_at=as_datetime(record.enqueued_at),
        # afterwork keeps the start of the latest attempt (and its worker) only
        started_at=started,
        finished_at=as_datetime(record.finished_at) if status in _FINISHED else None,
        last_attempted_at=started,
        args=envelope["args"],
        kwargs=envelope["kwargs"],
        backend=envelope["backend"],
        errors=_errors(record, status),
        # one per attempt: the worker's id while it runs; brokers may not keep it after
        worker_ids=[record.worker or ""] * record.attempts,
    )
    if status == JobStatus.SUCCEEDED and record.result is not None:
        object.__setattr__(result, "_return_value", app.serializer.loads(record.result))
    return result


def _errors(record: JobRecord, status: JobStatus) -> list[TaskError]:
    errors = []
    if record.error is not None:
        errors.append(
            TaskError(
                exception_class_path=error_path(record.error.type),
                traceback=record.error.traceback or f"{record.error.type}: {record.error.message}",
            )
        )
    if status == JobStatus.CANCELLED and record.error is None:
        errors.append(
            TaskError(
                exception_class_path="afterwork.errors.JobCancelled",
                traceback=f"afterwork.errors.JobCancelled: job {record.id} was cancelled",
            )
        )
    return errors
