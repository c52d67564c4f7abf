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
named by the task's import path, with their priority, queue and
``run_after``; ``python manage.py afterwork_worker`` (or an embedded worker)
runs them (see :mod:`.running`), and ``get_result()`` reads them back as the
framework's ``TaskResult`` (see :mod:`.results`).

Options: ``url`` (a broker URL; default ``AFTERWORK_URL``, then
``sqlite:///afterwork.db``) or ``app`` (an :class:`Afterwork` instance or its
``"module:attribute"`` path, to share an app and its workers with
``@jobs.task`` tasks); ``retries`` (default 0: as in Django, a task that
raises has failed), ``timeout`` and ``result_ttl``.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from ...app import Afterwork
from ...defaults import DEFAULT_QUEUE, DEFAULT_URL, URL_ENV_VAR
from ...errors import AfterworkError, JobNotFound
from ...job import JobRecord, new_job_id
from ...task import check_queue
from ._compat import (
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskResult,
    TaskResultDoesNotExist,
    task_enqueued,
)
from .results import as_datetime, aware, job_envelope, load_task, new_result, result_from_record
from .running import register_runners, task_names

__all__ = ["AfterworkBackend"]

OPTIONS = ("url", "app", "retries", "timeout", "result_ttl")

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
            register_runners(self.app, alias, options)
        except AfterworkError as exc:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]: {exc}") from exc

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
        path = task.module_path
        registered = self.app.tasks.get(path)
        if registered is not None:
            # A worker would run that task instead of this one.
            raise InvalidTask(
                f"cannot enqueue {path}: an afterwork task of {self.app!r} has that name "
                f"({registered.func.__module__}.{registered.func.__qualname__}); rename it"
            )
        result_id = new_job_id()
        result = new_result(task, result_id, self.alias, list(args), kwargs)
        run_after = aware(task.run_after) if task.run_after is not None else None
        runner = task_names(self.app).task_for(self.alias, task)
        runner = runner.using(priority=task.priority, queue=task.queue_name, run_at=run_after)
        envelope = {
            "backend": self.alias,
            "task": path,
            "id": result_id,
            "run_after": run_after.timestamp() if run_after is not None else None,
            "args": result.args,
            "kwargs": result.kwargs,
        }
        try:
            record = runner.prepare(envelope)
        except AfterworkError as exc:
            raise InvalidTask(str(exc)) from exc
        record.id = result_id  # the job's id is the result's, known to the job itself
        object.__setattr__(result, "enqueued_at", as_datetime(record.enqueued_at))
        return record, result

    def _result_of(self, record: JobRecord, result_id: str) -> TaskResult[Any]:
        envelope = job_envelope(self.app, record)
        if envelope is None:  # another kind of job: no result of this framework's
            raise TaskResultDoesNotExist(result_id)
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
