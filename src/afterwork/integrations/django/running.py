"""Running Django tasks on afterwork's workers.

Two afterwork tasks run every Django task of a backend: :func:`run_task` for
sync functions (in a worker's thread pool) and :func:`arun_task` for coroutine
functions (on its event loop). They are registered as ``django.tasks.<alias>``
(and ``.async``), with the backend's retries, timeout and result TTL, so jobs
stored under those names by earlier versions still run. New jobs are named by
the Django task's own import path, which the CLI and the logs show; the app's
:class:`TaskNames` resolver tells a worker which runner such a name needs.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from django.db import close_old_connections
from django.utils import timezone

from ...app import Afterwork
from ...errors import UnknownTask
from ...job import JobRecord, error_info
from ...task import Task as AfterworkTask
from ._compat import (
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    normalize_json,
    task_backends,
    task_finished,
    task_started,
)
from .results import (
    FAILED,
    LEGACY_PREFIX,
    SUCCESSFUL,
    TaskRefused,
    error_path,
    find_task,
    load_task,
    result_from_record,
)

if TYPE_CHECKING:
    from .backend import AfterworkBackend

logger = logging.getLogger("afterwork.django")


class Runners(NamedTuple):
    """A backend's two runners, with its options: for sync and for async functions."""

    sync: AfterworkTask[Any, Any]
    coroutine: AfterworkTask[Any, Any]

    def for_task(self, task: Task[Any, Any]) -> AfterworkTask[Any, Any]:
        return self.coroutine if inspect.iscoroutinefunction(task.func) else self.sync


def register_runners(app: Afterwork, alias: str, options: Mapping[str, Any]) -> Runners:
    """Register the runners of backend ``alias`` on ``app`` (once), and what names them."""
    runners = Runners(
        _register(app, LEGACY_PREFIX + alias, run_task, options),
        _register(app, LEGACY_PREFIX + alias + ".async", arun_task, options),
    )
    names = task_names(app)
    names.add(alias, runners)
    app.add_task_resolver(names)
    return runners


def _register(
    app: Afterwork, name: str, func: Any, options: Mapping[str, Any]
) -> AfterworkTask[Any, Any]:
    existing = app.tasks.get(name)
    if existing is not None and existing.func is func:
        return existing
    return app.task(
        name=name,
        retries=options.get("retries", 0),
        timeout=options.get("timeout"),
        result_ttl=options.get("result_ttl"),
    )(func)


class TaskNames:
    """An app's resolver of Django task names: ``myproject.tasks.send_email`` is run by
    the runner of the backend the task belongs to, under the task's own name.

    A name is looked up with :func:`.results.find_task`: its module is imported
    only from the package of an installed app (or found already imported), and
    only a framework ``Task`` there is run. A name that is not one is not a
    Django task's, and the app reports it unknown; one whose module is outside
    the installed apps is reported unknown with that reason, without importing it.
    """

    def __init__(self) -> None:
        self._runners: dict[str, Runners] = {}
        self._named: dict[tuple[str, str], AfterworkTask[Any, Any]] = {}

    def add(self, alias: str, runners: Runners) -> None:
        self._runners.setdefault(alias, runners)

    def task_for(self, alias: str, task: Task[Any, Any]) -> AfterworkTask[Any, Any]:
        """The afterwork task that runs ``task`` for backend ``alias``, named by its path."""
        key = (alias, task.module_path)
        named = self._named.get(key)
        if named is None:
            runner = self._runners[alias].for_task(task)
            named = self._named[key] = AfterworkTask(
                runner.app,
                runner.func,
                name=task.module_path,
                queue=runner.queue,
                priority=runner.priority,
                retry=runner.retry,
                timeout=runner.timeout,
                result_ttl=runner.result_ttl,
            )
        return named

    def __call__(self, name: str) -> AfterworkTask[Any, Any] | None:
        try:
            task = find_task(name)
        except TaskRefused as exc:
            raise UnknownTask(
                f"no task named {name!r} is registered in this worker; {exc}"
            ) from None
        except Exception as exc:  # importing runs the module's code: anything can fail
            module_name = name.rpartition(".")[0]
            raise UnknownTask(f"cannot import {module_name} for task {name!r}: {exc}") from exc
        if task is None:
            return None
        # The alias only picks the backoff between attempts: their number, the timeout
        # and the result TTL are in the job's record, from the backend that enqueued it.
        # A resolver sees the name, not the envelope, so a job enqueued with
        # .using(backend=...) on another backend of this app waits as the task's own says.
        alias = task.backend if task.backend in self._runners else next(iter(self._runners))
        return self.task_for(alias, task)


# Like the backends' apps, kept for the life of the process (the app holds its resolver).
_names: dict[Afterwork, TaskNames] = {}
_names_lock = threading.Lock()


def task_names(app: Afterwork) -> TaskNames:
    """The one resolver of Django task names for ``app``, shared by its backends."""
    with _names_lock:
        names = _names.get(app)
        if names is None:
            names = _names[app] = TaskNames()
        return names


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
        error = TaskError(exception_class_path=error_path(info.type), traceback=info.traceback)
        return dataclasses.replace(
            result, status=FAILED, finished_at=timezone.now(), errors=[error]
        )

    def report(self, signal: Any, outcomes: Any) -> None:
        """Log the receivers that raised (they never fail the task)."""
        for receiver, outcome in outcomes:
            if isinstance(outcome, Exception):
                logger.error(
                    "a receiver of %s failed for task %s: %r",
                    "task_started" if signal is task_started else "task_finished",
                    self.task.module_path,
                    outcome,
                    exc_info=outcome,
                    extra={"receiver": repr(receiver), "task": self.task.module_path},
                )

    def send(self, signal: Any, result: TaskResult[Any] | None) -> None:
        if result is None:
            return
        try:
            outcomes = signal.send_robust(type(self.backend), task_result=result)
        except Exception as exc:  # Django's own report of a failed receiver can fail
            outcomes = [(None, exc)]
        self.report(signal, outcomes)

    async def asend(self, signal: Any, result: TaskResult[Any] | None) -> None:
        if result is None:
            return
        try:
            outcomes = await signal.asend_robust(type(self.backend), task_result=result)
        except Exception as exc:  # as in send()
            outcomes = [(None, exc)]
        self.report(signal, outcomes)


def run_task(envelope: dict[str, Any]) -> Any:
    """Run a sync Django task (in a worker's thread pool), as the framework would."""
    close_old_connections()
    try:
        run = _Run(envelope)
        result, args, kwargs = run.start(run.app.job(envelope["id"]).info())
        run.send(task_started, result)
        try:
            finished, value = run.succeeded(result.task.func(*args, **kwargs))
        except (Exception, SystemExit) as exc:  # failures, as the worker counts them; not Ctrl-C
            # Sent while the exception is handled, so receivers (Django's log) can see it.
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
    except (Exception, SystemExit) as exc:  # failures, as the worker counts them; not a cancel
        # asgiref hands the exception being handled to the sync receivers' thread.
        await run.asend(task_finished, run.failed(exc))
        raise
    await run.asend(task_finished, finished)
    return value
