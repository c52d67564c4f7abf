"""``AfterworkBackend``: Django's tasks framework on afterwork's brokers and workers.

::

    TASKS = {
        "default": {
            "BACKEND": "afterwork.integrations.django.AfterworkBackend",
            "OPTIONS": {"url": "sqlite:///afterwork.db"},
        }
    }

``@task`` functions (from ``django.tasks``, or ``django_tasks`` before Django
6.0) enqueued with ``.enqueue()`` / ``.aenqueue()`` become afterwork jobs,
with their priority, queue and ``run_after``; ``python manage.py
afterwork_worker`` (or an embedded worker) runs them, and ``get_result()``
reads them back as the framework's ``TaskResult``.

Each job carries a small envelope (backend alias, the task's import path, the
result id, arguments) and is run by one of two registered afterwork tasks, one
for sync and one for async functions. A worker imports the task's path only
to find a framework ``Task`` object there, as Django's own database backend
does; anything else at that path is refused.

Options: ``url`` (a broker URL; default ``AFTERWORK_URL``, then
``sqlite:///afterwork.db``) or ``app`` (an :class:`Afterwork` instance or its
``"module:attribute"`` path, to share an app and its workers with
``@jobs.task`` tasks); ``retries`` (default 0: as in Django, a task that
raises has failed), ``timeout`` and ``result_ttl``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections
from django.utils import timezone
from django.utils.module_loading import import_string

from ...app import Afterwork
from ...defaults import DEFAULT_QUEUE, DEFAULT_URL, URL_ENV_VAR
from ...errors import AfterworkError, JobNotFound
from ...job import JobRecord, JobStatus, new_job_id
from ...serialization import decode_arguments
from ...task import Task as AfterworkTask
from ...task import check_queue
from ...worker import error_info
from ._compat import (
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    normalize_json,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)

__all__ = ["AfterworkBackend"]

logger = logging.getLogger("afterwork.django")

#: Names of the afterwork tasks that run Django tasks: ``django.tasks.<alias>``
#: for sync functions, with ``.async`` after it for coroutine functions.
NAME_PREFIX = "django.tasks."
OPTIONS = ("url", "app", "retries", "timeout", "result_ttl")

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

# Django makes one backend instance per thread; they share one app (and broker).
_apps: dict[tuple[str, str], Afterwork] = {}
_apps_lock = threading.Lock()


class AfterworkBackend(BaseTaskBackend):
    supports_defer = True
    supports_async_task = True
    supports_priority = True
    #: Results are readable from any process on a durable broker; on
    #: ``memory://`` only in the process that runs the jobs (set per instance).
    supports_get_result = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options: Mapping[str, Any] = self.options
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown keys {unknown}; "
                f"afterwork's backend takes {', '.join(OPTIONS)}"
            )
        self.app = _app_for(alias, options)
        self.supports_get_result = self.app.broker.durable
        try:
            self._runners = (
                self._register(NAME_PREFIX + alias, run_task, options),
                self._register(NAME_PREFIX + alias + ".async", arun_task, options),
            )
        except AfterworkError as exc:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]: {exc}") from exc

    def _register(
        self, name: str, func: Any, options: Mapping[str, Any]
    ) -> AfterworkTask[Any, Any]:
        existing = self.app.tasks.get(name)
        if existing is not None and existing.func is func:
            return existing
        return self.app.task(
            name=name,
            retries=options.get("retries", 0),
            timeout=options.get("timeout"),
            result_ttl=options.get("result_ttl"),
        )(func)

    # -- the framework's interface ----------------------------------------------------

    def validate_task(self, task: Task[Any, Any]) -> None:
        super().validate_task(task)
        try:
            check_queue(task.queue_name, f"task {task.module_path}")
        except AfterworkError as exc:
            raise InvalidTask(str(exc)) from None

    def enqueue(
        self, task: Task[Any, Any], args: Iterable[Any], kwargs: dict[str, Any]
    ) -> TaskResult[Any]:
        self.validate_task(task)
        record, result = self._prepare(task, args, kwargs)
        self.app.portal.call(self.app.asubmit([record]))
        task_enqueued.send(type(self), task_result=result)
        return result

    async def aenqueue(
        self, task: Task[Any, Any], args: Iterable[Any], kwargs: dict[str, Any]
    ) -> TaskResult[Any]:
        self.validate_task(task)
        record, result = self._prepare(task, args, kwargs)
        await self.app.asubmit([record])
        await task_enqueued.asend(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[Any]:
        try:
            record = self.app.job(result_id).info()
        except JobNotFound:
            raise TaskResultDoesNotExist(result_id) from None
        return self._result_of(record, result_id)

    async def aget_result(self, result_id: str) -> TaskResult[Any]:
        try:
            record = await self.app.job(result_id).ainfo()
        except JobNotFound:
            raise TaskResultDoesNotExist(result_id) from None
        return self._result_of(record, result_id)

    # -- workers ----------------------------------------------------------------------

    def worker_queues(self) -> list[str]:
        """The queues a worker for this backend serves: its ``QUEUES``, ``default`` first."""
        queues = sorted(self.queues) or [DEFAULT_QUEUE]
        if DEFAULT_QUEUE in queues:
            queues.remove(DEFAULT_QUEUE)
            queues.insert(0, DEFAULT_QUEUE)
        return queues

    # -- between TaskResult and job records -------------------------------------------

    def _prepare(
        self, task: Task[Any, Any], args: Iterable[Any], kwargs: dict[str, Any]
    ) -> tuple[JobRecord, TaskResult[Any]]:
        result_id = new_job_id()
        result = _new_result(task, result_id, self.alias, list(args), kwargs)
        runner = self._runners[1 if inspect.iscoroutinefunction(task.func) else 0]
        run_after = _aware(task.run_after) if task.run_after is not None else None
        runner = runner.using(priority=task.priority, queue=task.queue_name, run_at=run_after)
        envelope = {
            "backend": self.alias,
            "task": task.module_path,
            "id": result_id,
            "run_after": run_after.timestamp() if run_after is not None else None,
            "args": result.args,
            "kwargs": result.kwargs,
        }
        try:
            record = runner.prepare(envelope)
        except AfterworkError as exc:
            raise InvalidTask(f"cannot enqueue {task.module_path}: {exc}") from exc
        record.id = result_id  # the job's id is the result's, known to the job itself
        object.__setattr__(result, "enqueued_at", _datetime(record.enqueued_at))
        return record, result

    def _result_of(self, record: JobRecord, result_id: str) -> TaskResult[Any]:
        if not record.task.startswith(NAME_PREFIX):
            raise TaskResultDoesNotExist(result_id)
        envelope = _envelope(self.app, record)
        return result_from_record(self.app, record, envelope, load_task(envelope))


def _app_for(alias: str, options: Mapping[str, Any]) -> Afterwork:
    app = options.get("app")
    url = options.get("url")
    if app is not None and url is not None:
        raise ImproperlyConfigured(
            f"TASKS[{alias!r}]['OPTIONS']: give 'url' or 'app', not both (the app has its URL)"
        )
    if isinstance(app, Afterwork):
        return app
    if app is not None:
        if not isinstance(app, str):
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['app'] must be an Afterwork app or its "
                f"'module:attribute' path; got {app!r}"
            )
        module, _, attribute = app.partition(":")
        try:
            found: Any = importlib.import_module(module)
            for part in attribute.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['app']: cannot load {app!r} ({exc}); "
                "write it as 'myproject.jobs:jobs'"
            ) from exc
        if not isinstance(found, Afterwork):
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['app']: {app} is a {type(found).__name__}, "
                "not an Afterwork app"
            )
        return found
    url = url or os.environ.get(URL_ENV_VAR) or DEFAULT_URL
    key = (alias, repr(sorted({**options, "url": url}.items())))
    with _apps_lock:
        shared = _apps.get(key)
        if shared is None:
            try:
                shared = _apps[key] = Afterwork(url)
            except AfterworkError as exc:
                raise ImproperlyConfigured(f"TASKS[{alias!r}]: {exc}") from exc
        return shared


def _aware(when: datetime) -> datetime:
    return when if timezone.is_aware(when) else timezone.make_aware(when)


def _datetime(timestamp: float | None) -> datetime | None:
    """A timestamp as Django would show it: aware in UTC, or naive local time without USE_TZ."""
    if timestamp is None:
        return None
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return when if settings.USE_TZ else timezone.make_naive(when)


def _new_result(
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


def _envelope(app: Afterwork, record: JobRecord) -> dict[str, Any]:
    args, _ = decode_arguments(app.serializer, record.payload)
    envelope: dict[str, Any] = args[0]
    return envelope


def load_task(envelope: Mapping[str, Any]) -> Task[Any, Any]:
    """The framework ``Task`` a job names, with the options it was enqueued with."""
    path = envelope["task"]
    try:
        task = import_string(path)
    except ImportError as exc:
        raise InvalidTask(f"cannot import task {path!r}: {exc}") from exc
    if not isinstance(task, Task):
        raise InvalidTask(
            f"{path!r} is not a task (a function decorated with @task); refusing to run it"
        )
    run_after = envelope.get("run_after")
    return task.using(
        backend=envelope["backend"],
        run_after=_datetime(run_after) if run_after is not None else None,
    )


def _error_path(error_type: str) -> str:
    """``ValueError`` -> ``builtins.ValueError``: an importable exception path."""
    return error_type if "." in error_type else f"builtins.{error_type}"


def result_from_record(
    app: Afterwork, record: JobRecord, envelope: Mapping[str, Any], task: Task[Any, Any]
) -> TaskResult[Any]:
    """The framework's view of a job: status, times, errors, workers and return value."""
    status = record.status_at(app.clock.now())
    task = task.using(priority=record.priority, queue_name=record.queue)
    errors = []
    if record.error is not None:
        errors.append(
            TaskError(
                exception_class_path=_error_path(record.error.type),
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
    started = _datetime(record.started_at)
    result: TaskResult[Any] = TaskResult(
        task=task,
        id=envelope["id"],
        status=_STATUS[status],
        enqueued_at=_datetime(record.enqueued_at),
        # afterwork keeps the start of the latest attempt (and its worker) only
        started_at=started,
        finished_at=_datetime(record.finished_at) if status in _FINISHED else None,
        last_attempted_at=started,
        args=envelope["args"],
        kwargs=envelope["kwargs"],
        backend=envelope["backend"],
        errors=errors,
        # one per attempt: the worker's id while it runs; brokers may not keep it after
        worker_ids=[record.worker or ""] * record.attempts,
    )
    if status == JobStatus.SUCCEEDED and record.result is not None:
        object.__setattr__(result, "_return_value", app.serializer.loads(record.result))
    return result


_FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


# -- running Django tasks on afterwork's workers ------------------------------------------


class _Run:
    """One attempt of a Django task inside an afterwork worker, and its ``TaskResult``s."""

    def __init__(self, envelope: dict[str, Any]) -> None:
        self.envelope = envelope
        self.backend: AfterworkBackend = task_backends[envelope["backend"]]
        self.app = self.backend.app
        self.task = load_task(envelope)
        self.record: JobRecord | None = None
        self.result: TaskResult[Any] | None = None

    def start(self, record: JobRecord) -> tuple[TaskResult[Any], list[Any], dict[str, Any]]:
        """The running result (for ``task_started``) and the function's arguments."""
        self.record = record
        result = self.result = result_from_record(self.app, record, self.envelope, self.task)
        args = list(self.envelope["args"])
        if result.task.takes_context:
            args.insert(0, TaskContext(task_result=result))
        return result, args, dict(self.envelope["kwargs"])

    def succeeded(self, value: Any) -> tuple[TaskResult[Any], Any]:
        """The finished result and the return value, JSON-normalized as Django does."""
        assert self.result is not None
        value = normalize_json(value)
        finished = dataclasses.replace(self.result, status=SUCCESSFUL, finished_at=timezone.now())
        object.__setattr__(finished, "_return_value", value)
        return finished, value

    def failed(self, exc: BaseException) -> TaskResult[Any] | None:
        """The failed result, or None when the job will be retried (so it is not finished)."""
        record, result = self.record, self.result
        assert record is not None
        assert result is not None
        if record.attempts < record.max_attempts:
            return None
        info = error_info(exc)
        error = TaskError(exception_class_path=_error_path(info.type), traceback=info.traceback)
        return dataclasses.replace(
            result, status=FAILED, finished_at=timezone.now(), errors=[error]
        )

    def report(self, signal: Any, result: TaskResult[Any] | None, outcomes: Any) -> None:
        """Log the receivers that raised (they never fail the task)."""
        for receiver, outcome in outcomes:
            if isinstance(outcome, Exception):
                logger.error(
                    "a receiver of %s failed for task %s: %r",
                    "task_started" if signal is task_started else "task_finished",
                    self.task.module_path,
                    outcome,
                    exc_info=outcome,
                    extra={"receiver": repr(receiver)},
                )

    def send(self, signal: Any, result: TaskResult[Any] | None) -> None:
        if result is not None:
            self.report(signal, result, signal.send_robust(type(self.backend), task_result=result))

    async def asend(self, signal: Any, result: TaskResult[Any] | None) -> None:
        if result is not None:
            outcomes = await signal.asend_robust(type(self.backend), task_result=result)
            self.report(signal, result, outcomes)


def run_task(envelope: dict[str, Any]) -> Any:
    """Run a sync Django task (in a worker's thread pool), as the framework would."""
    close_old_connections()
    try:
        run = _Run(envelope)
        result, args, kwargs = run.start(run.app.job(envelope["id"]).info())
        run.send(task_started, result)
        try:
            finished, value = run.succeeded(result.task.func(*args, **kwargs))
        except Exception as exc:
            run.send(task_finished, run.failed(exc))
            raise
        run.send(task_finished, finished)
        return value
    finally:
        close_old_connections()


async def arun_task(envelope: dict[str, Any]) -> Any:
    """Run an async Django task (on a worker's event loop), as the framework would."""
    run = _Run(envelope)
    result, args, kwargs = run.start(await run.app.job(envelope["id"]).ainfo())
    await run.asend(task_started, result)
    try:
        finished, value = run.succeeded(await result.task.func(*args, **kwargs))
    except Exception as exc:
        await run.asend(task_finished, run.failed(exc))
        raise
    await run.asend(task_finished, finished)
    return value
