"""The ``Afterwork`` app: the broker URL, the task registry, settings and lifecycle."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar, overload

from .brokers import Broker, create_broker
from .clock import SYSTEM_CLOCK, Clock
from .defaults import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DEAD_LETTER_TTL,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_MAX_PAYLOAD_SIZE,
    DEFAULT_MAX_PENDING,
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    DEFAULT_RESULT_TTL,
    DEFAULT_URL,
    URL_ENV_VAR,
)
from .errors import (
    ConfigurationError,
    TaskConfigurationError,
    UnknownTask,
)
from .hooks import Hook, HookRunner
from .inprocess import InProcessQueue, LocalJob
from .job import JobHandle, JobRecord
from .portal import Portal
from .retry import RetryPolicy
from .schedule import DurationLike, parse_duration, parse_schedule
from .scheduler import Periodic, check_no_arguments
from .serialization import Serializer, serializer_for
from .task import (
    Task,
    check_importable,
    importable_module,
    module_name,
    reject_unknown,
)

if TYPE_CHECKING:
    from .worker import Worker
    from .workeroptions import WorkerOptions

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("afterwork")


class Afterwork:
    """One app: where jobs go (``url``), which tasks exist, and how they are carried.

    ``url`` defaults to ``AFTERWORK_URL``, then to ``sqlite:///afterwork.db``.
    The URL is checked here; the engine is first reached when a job is sent or
    a worker starts.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        serializer: str | Serializer = "json",
        result_ttl: DurationLike = DEFAULT_RESULT_TTL,
        dead_letter_ttl: DurationLike = DEFAULT_DEAD_LETTER_TTL,
        max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
        max_pending: int = DEFAULT_MAX_PENDING,
        hooks: Iterable[Hook] = (),
        clock: Clock | None = None,
    ) -> None:
        if url is not None and (not isinstance(url, str) or not url.strip()):
            raise ConfigurationError(
                f"Afterwork(url={url!r}): the broker URL is empty; pass one such as "
                f"{DEFAULT_URL!r}, or leave it out to use {URL_ENV_VAR} or that default"
            )
        self.url = url or os.environ.get(URL_ENV_VAR) or DEFAULT_URL
        self.serializer = serializer_for(serializer)
        self.result_ttl = parse_duration(result_ttl, what="result_ttl")
        if isinstance(max_payload_size, bool) or not isinstance(max_payload_size, int):
            raise ConfigurationError(
                f"max_payload_size must be a number of bytes; got {max_payload_size!r}"
            )
        if max_payload_size <= 0:
            raise ConfigurationError(f"max_payload_size must be positive; got {max_payload_size}")
        self.max_payload_size = max_payload_size
        self.clock = clock or SYSTEM_CLOCK
        self.hooks = HookRunner(list(hooks))
        self.portal = Portal()
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._task_resolvers: list[Callable[[str], Task[Any, Any] | None]] = []
        #: Periodic tasks by name; every worker's scheduler fires them.
        self.schedules: dict[str, Periodic] = {}
        self.broker: Broker = create_broker(
            self.url,
            clock=self.clock,
            dead_letter_ttl=parse_duration(dead_letter_ttl, what="dead_letter_ttl"),
        )
        #: Ad hoc jobs (``jobs.enqueue(func)``) may only name functions in this
        #: package: a payload can never make a worker import arbitrary code.
        self.home_package = _caller_package()
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigurationError(f"max_pending must be a positive int; got {max_pending!r}")
        #: ``jobs.enqueue(func)`` on ``memory://``; runs while the app runs.
        self.local_queue = InProcessQueue(max_pending=max_pending, concurrency=DEFAULT_CONCURRENCY)
        self._embedded: tuple[Worker, asyncio.Task[None]] | None = None
        self._thread: tuple[threading.Thread, asyncio.AbstractEventLoop] | None = None

    def __repr__(self) -> str:
        from .brokers import redact

        return f"<Afterwork {redact(self.url)} tasks={len(self.tasks)}>"

    # -- defining tasks ---------------------------------------------------------------

    @overload
    def task(self, func: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...

    @overload
    def task(self, func: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        retries: int | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        result_ttl: DurationLike | None = None,
    ) -> _TaskDecorator: ...

    def task(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        retries: int | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        result_ttl: DurationLike | None = None,
        **unknown: NoReturn,
    ) -> Any:
        """Register a function as a task: ``@jobs.task`` or ``@jobs.task(retries=3, ...)``.

        ``retries`` is the number of retries after the first attempt, or a
        :class:`RetryPolicy`; the default policy makes 3 attempts in all.
        Every option is checked here, so a mistake fails at import time.
        """

        def decorate(fn: Callable[..., Any]) -> Task[Any, Any]:
            return self._register(fn, name, queue, priority, retries, timeout, result_ttl, unknown)

        return decorate if func is None else decorate(func)

    def _register(
        self,
        func: Callable[..., Any],
        name: str | None,
        queue: str,
        priority: int,
        retries: int | RetryPolicy | None,
        timeout: DurationLike | None,
        result_ttl: DurationLike | None,
        unknown: dict[str, Any],
        *,
        ad_hoc: bool = False,
    ) -> Task[Any, Any]:
        label = getattr(func, "__qualname__", repr(func))
        check_importable(func, f"task {label}")
        task_name = name or f"{module_name(func)}.{func.__qualname__}"
        # ':' marks ad hoc names ("module:function"), so a task's own name cannot use it.
        if not isinstance(task_name, str) or (":" in task_name and not ad_hoc):
            raise TaskConfigurationError(
                f"task {label}: name must be a string without ':'; got {task_name!r}"
            )
        where = f"task {task_name}"
        reject_unknown(unknown, where)
        existing = self.tasks.get(task_name)
        if existing is not None and existing.func is not func:
            raise TaskConfigurationError(
                f"{where}: the name {task_name!r} is already used by another task; "
                "pass name=... to tell them apart"
            )
        # Every other option is checked where a task is built, as it is for using().
        task = Task.define(
            self,
            func,
            name=task_name,
            queue=queue,
            priority=priority,
            retries=retries,
            timeout=timeout,
            result_ttl=result_ttl,
        )
        self.tasks[task_name] = task
        return task

    def periodic(
        self,
        *,
        every: DurationLike | None = None,
        cron: str | None = None,
        tz: str | tzinfo | None = None,
        catch_up: bool = False,
        overlap: bool = False,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        retries: int | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        result_ttl: DurationLike | None = None,
        **unknown: NoReturn,
    ) -> Callable[[Callable[[], Any]], Task[[], Any]]:
        """Run a function on a schedule: ``every="30m"`` (elapsed time) or
        ``cron="0 2 * * *"`` in ``tz`` (UTC unless given). One job per fire,
        however many workers run a scheduler.

        ``catch_up`` runs the most recent fire missed while nothing was running
        (once); ``overlap`` lets a fire start while the previous run still goes.
        The other options are those of :meth:`task`; all are checked here.
        """

        def decorate(fn: Callable[[], Any]) -> Task[[], Any]:
            where = f"periodic task {getattr(fn, '__qualname__', fn)!r}"
            schedule = parse_schedule(every=every, cron=cron, tz=tz, where=where)
            check_no_arguments(fn, where)
            task = self._register(fn, name, queue, priority, retries, timeout, result_ttl, unknown)
            self.schedules[task.name] = Periodic(task, schedule, catch_up, overlap)
            return task

        return decorate

    def add_task_resolver(self, resolver: Callable[[str], Task[Any, Any] | None]) -> None:
        """Let an integration run jobs named after tasks it keeps itself (Django's
        ``@task`` functions, by their import path), so those names are what the CLI and
        logs show. :meth:`resolve_task` asks each resolver, in the order added, about a
        name no registered task has (never an ad hoc one); a resolver returns None for
        names it does not own, or raises :class:`UnknownTask` to say why it cannot run one
        it does. Adding a resolver twice changes nothing."""
        if resolver not in self._task_resolvers:
            self._task_resolvers.append(resolver)

    def resolve_task(self, name: str) -> Task[Any, Any]:
        """The task a job names. Ad hoc ``module:function`` names are imported,
        but only from the app's own package."""
        task = self.tasks.get(name)
        if task is not None:
            return task
        if ":" in name:
            return self._import_ad_hoc(name)
        for resolver in self._task_resolvers:
            task = resolver(name)
            if task is not None:
                return task
        raise UnknownTask(
            f"no task named {name!r} is registered in this worker; make sure the module that "
            "defines it is imported by the app the worker loads"
        )

    def _import_ad_hoc(self, name: str) -> Task[Any, Any]:
        module, _, qualname = name.partition(":")
        home = self.home_package
        if not self._in_home_package(module):
            raise UnknownTask(
                f"ad hoc job {name!r} names a function outside the app's package {home!r}; "
                "only functions in the app's own package run as ad hoc jobs. "
                "Decorate it with @jobs.task instead"
            )
        try:
            target: Any = importlib.import_module(module)
            for part in qualname.split("."):
                target = getattr(target, part)
        except Exception as exc:  # importing runs the module's code: anything can fail
            raise UnknownTask(f"cannot import ad hoc job function {name!r}: {exc}") from exc
        # The name must be where the function is defined, not a path through the
        # package's imports ("app.views:os.system" would reach any imported code).
        func = target.func if isinstance(target, Task) else target
        if module_name(func) != module or getattr(func, "__qualname__", None) != qualname:
            raise UnknownTask(
                f"ad hoc job {name!r} does not name a function defined in {module}; "
                "only functions defined in the app's own package run as ad hoc jobs"
            )
        return self._ad_hoc_task(target)

    def _in_home_package(self, module: str) -> bool:
        home = self.home_package
        return bool(home) and (module == home or module.startswith(home + "."))

    def _ad_hoc_task(self, func: Callable[..., Any]) -> Task[Any, Any]:
        if isinstance(func, Task):
            return func
        check_importable(func, f"ad hoc job {getattr(func, '__qualname__', func)!r}")
        if getattr(func, "__module__", None) == "__main__" and _running_a_script():
            # A worker would have to import the running script under another name,
            # running its top-level code again; refuse now rather than dead-letter later.
            # (``python -m pkg.tool`` is a module a worker imports by its name.)
            raise TaskConfigurationError(
                f"cannot enqueue {func.__qualname__} as an ad hoc job: it is defined in the "
                "script being run (__main__), which a worker cannot import. Move it to a "
                "module of your app's package and import it from there"
            )
        module = module_name(func)
        if not self._in_home_package(module):
            # A worker would refuse to import it (and dead-letter the job): say so now.
            raise TaskConfigurationError(
                f"cannot enqueue {func.__qualname__} (from module {module!r}) as an ad hoc job: "
                f"workers only import ad hoc functions from the app's own package "
                f"{self.home_package!r}. Decorate it with @jobs.task, or define it in "
                f"{self.home_package!r}"
            )
        name = f"{module}:{func.__qualname__}"
        task = self.tasks.get(name)
        if task is None:
            task = self._register(
                func, name, DEFAULT_QUEUE, DEFAULT_PRIORITY, None, None, None, {}, ad_hoc=True
            )
        return task

    # -- sending jobs -----------------------------------------------------------------

    async def aconnect(self) -> Broker:
        await self.broker.connect()
        return self.broker

    def connect(self) -> Broker:
        return self.portal.call(self.aconnect())

    async def aclose(self) -> None:
        await self.broker.close()

    def close(self) -> None:
        self.portal.call(self.aclose())
        self.portal.close()

    async def asubmit(self, records: Sequence[JobRecord]) -> list[JobRecord]:
        """Hand prepared jobs to the broker in one round trip, with the enqueue hooks."""
        if self.hooks.active("before_enqueue"):
            for record in records:
                self.hooks.emit("before_enqueue", record)
        broker = await self.aconnect()
        stored = await broker.enqueue(records)
        if self.hooks.active("after_enqueue"):
            for record in stored:
                self.hooks.emit("after_enqueue", record)
        return stored

    def enqueue(
        self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> JobHandle[Any] | LocalJob:
        """Run ``func(*args, **kwargs)`` in the background without decorating it.

        On ``memory://`` this is the in-process queue: any callable, nothing
        serialized, the caller's context variables kept, while the app runs.
        On durable brokers it must be a module-level function of the app's own
        package, so a worker elsewhere can import it.
        """
        if not self.broker.durable:
            return self.local_queue.submit(_unwrap(func), args, kwargs)
        return self._ad_hoc_task(func).enqueue(*args, **kwargs)

    async def aenqueue(
        self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> JobHandle[Any] | LocalJob:
        if not self.broker.durable:
            return self.local_queue.submit(_unwrap(func), args, kwargs)
        return await self._ad_hoc_task(func).aenqueue(*args, **kwargs)

    def enqueue_many(self, records: Iterable[JobRecord]) -> list[JobHandle[Any]]:
        """Send many jobs built with ``task.prepare(...)`` in one round trip."""
        batch = list(records)
        return [JobHandle(self, r.id) for r in self.portal.call(self.asubmit(batch))]

    async def aenqueue_many(self, records: Iterable[JobRecord]) -> list[JobHandle[Any]]:
        batch = list(records)
        return [JobHandle(self, r.id) for r in await self.asubmit(batch)]

    def job(self, job_id: str) -> JobHandle[Any]:
        """A handle for a job id seen earlier (in a log, a URL, the CLI)."""
        return JobHandle(self, job_id)

    def worker(self, options: WorkerOptions | None = None, **changes: Any) -> Worker:
        """A worker for this app, with :class:`~afterwork.workeroptions.WorkerOptions`
        given whole or as keyword arguments (``jobs.worker(concurrency=20)``); each is
        checked here, and a misspelt one is refused with the name it resembles."""
        from .worker import Worker

        return Worker(self, options, **changes)

    # -- the embedded worker: jobs run inside the web process -------------------------

    @property
    def running(self) -> bool:
        """Whether the app's embedded worker (and in-process queue) runs in this process."""
        return self._embedded is not None

    def queues(self) -> list[str]:
        """Every queue a registered task uses, ``default`` first."""
        return list(dict.fromkeys([DEFAULT_QUEUE, *(t.queue for t in self.tasks.values())]))

    async def start(self, *, queues: Sequence[str] | None = None, **options: Any) -> Worker:
        """Run a worker inside this process, on the running loop, until :meth:`stop`.

        This is the in-process queue on ``memory://``; on a durable broker it is
        an embedded worker, so queued work survives a restart with no second
        process. Serves every known queue unless ``queues`` is given; the other
        options are the worker's (:meth:`worker`), checked before anything starts.
        """
        if self._embedded is not None:
            return self._embedded[0]
        worker = self.worker(queues=self.queues() if queues is None else queues, **options)
        if not self.broker.durable:
            self.local_queue.concurrency = worker.concurrency
            await self.local_queue.start()
        task = asyncio.create_task(worker.run(), name="afterwork-embedded-worker")
        started = asyncio.ensure_future(worker.wait_started())
        await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
        if task.done():  # it failed to start (an unreachable broker, say): say why
            started.cancel()
            await self.local_queue.stop(0)
            task.result()
        self._embedded = (worker, task)
        return worker

    async def stop(self, *, grace_period: float = DEFAULT_GRACE_PERIOD) -> None:
        """Stop the embedded worker, giving queued in-process jobs and running ones
        ``grace_period`` seconds in all; what is dropped is logged."""
        if self._embedded is None:
            return
        worker, task = self._embedded
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_period
        try:
            await self.local_queue.stop(grace_period)
            worker.grace_period = max(deadline - loop.time(), 0.0)
            worker.stop()
            await task
        finally:
            self._embedded = None

    def start_in_thread(self, **options: Any) -> None:
        """:meth:`start` on a loop of its own in a daemon thread, for WSGI apps (Flask, Django)."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="afterwork-embedded", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(**options), loop).result()
        except BaseException:
            _end_loop_thread(thread, loop)
            raise
        self._thread = (thread, loop)

    def stop_in_thread(self, *, grace_period: float = DEFAULT_GRACE_PERIOD) -> None:
        if self._thread is None:
            return
        thread, loop = self._thread
        self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(self.stop(grace_period=grace_period), loop).result()
        finally:
            _end_loop_thread(thread, loop)


def _end_loop_thread(thread: threading.Thread, loop: asyncio.AbstractEventLoop) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    if not thread.is_alive():
        loop.close()  # its selector and self-pipe, rather than leaving them to the GC


def _unwrap(func: Callable[..., Any]) -> Callable[..., Any]:
    """A decorated task enqueued in-process runs as its plain function."""
    return func.func if isinstance(func, Task) else func


class _TaskDecorator:
    """What ``@jobs.task(...)`` returns, typed so the task keeps its signature."""

    @overload
    def __call__(self, func: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...

    @overload
    def __call__(self, func: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...

    @overload
    def __call__(self, func: Callable[P, R], /) -> Task[P, R]: ...

    def __call__(self, func: Callable[..., Any], /) -> Task[Any, Any]:
        raise NotImplementedError  # pragma: no cover - typing only


def _running_a_script() -> bool:
    """Whether ``__main__`` is a file run as a script, not a module run with ``-m``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is None or not spec.name


def _caller_package() -> str:
    """Top-level package of the module that created the app (outside afterwork itself)."""
    for frame_info in inspect.stack(context=0)[2:]:
        name = frame_info.frame.f_globals.get("__name__", "")
        if name != "afterwork" and not name.startswith("afterwork."):
            return importable_module(str(name)).split(".")[0]
    return ""
