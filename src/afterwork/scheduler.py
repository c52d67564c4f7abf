"""Periodic tasks: turn schedules into jobs, one job per fire, however many schedulers run.

Every fire has a time that all schedulers compute alike (intervals sit on a
grid anchored at the epoch; cron times are cron times). A scheduler that sees
a fire due asks the broker to record it and enqueue its job in one atomic
step (:meth:`Broker.claim_fire`); of racing schedulers one wins, and a fire
recorded once is never enqueued again, across restarts too.

Misfires: fires missed while no scheduler ran are skipped, unless the task
asks for ``catch_up``, which runs the most recent missed fire once. Overlap:
a fire that comes while the previous run is still waiting or running is
skipped and logged, unless the task allows ``overlap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .brokers import Broker, ScheduleState
from .errors import TaskConfigurationError
from .job import ACTIVE
from .schedule import Schedule, format_duration

if TYPE_CHECKING:
    from .app import Afterwork
    from .task import Task

logger = logging.getLogger("afterwork.scheduler")

#: A scheduler re-reads the clock at least this often, so a clock change (or a
#: test's manual clock) is noticed without a fire being late by more.
MAX_SLEEP = 30.0


@dataclass(frozen=True, slots=True)
class Periodic:
    """A task and when it runs."""

    task: Task[Any, Any]
    schedule: Schedule
    catch_up: bool = False
    overlap: bool = False

    @property
    def name(self) -> str:
        return self.task.name


def check_no_arguments(func: Any, where: str) -> None:
    """Nothing supplies arguments to a periodic run, so a required parameter is an error."""
    required = [
        p.name
        for p in inspect.signature(func).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if required:
        raise TaskConfigurationError(
            f"{where}: a periodic task is called with no arguments, but it requires "
            f"{', '.join(required)}; give them defaults or read them inside the task"
        )


class Scheduler:
    """Fires the app's periodic tasks; run one in every worker, or on its own."""

    def __init__(self, app: Afterwork) -> None:
        self.app = app
        self._next: dict[str, float] = {}
        self._stop = asyncio.Event()

    @property
    def periodic(self) -> list[Periodic]:
        return list(self.app.schedules.values())

    def next_fires(self) -> dict[str, float]:
        """When each periodic task fires next, as this scheduler sees it."""
        return dict(self._next)

    async def prepare(self, broker: Broker) -> None:
        """Decide the first fire of each task: the next one from now, or with
        ``catch_up`` the most recent missed one, if it was never recorded."""
        now = self.app.clock.now()
        states = await broker.schedule_states()
        for periodic in self.periodic:
            upcoming = periodic.schedule.next_after(now)
            state = states.get(periodic.name)
            if periodic.catch_up and state is not None:
                missed = periodic.schedule.latest_at_or_before(now)
                if missed > state.last_fire:
                    upcoming = missed
            self._next[periodic.name] = upcoming

    async def tick(self, broker: Broker) -> list[str]:
        """Fire whatever is due now; return the names of the tasks this call enqueued."""
        now = self.app.clock.now()
        due = [p for p in self.periodic if self._next.get(p.name, now + 1) <= now]
        if not due:
            return []
        states = await broker.schedule_states()
        fired: list[str] = []
        for periodic in due:
            fire_at = self._next[periodic.name]
            # Fires that passed while this loop slept (a suspended laptop, a long
            # stall) collapse into the latest: at most one run per tick.
            latest = periodic.schedule.latest_at_or_before(now)
            if latest > fire_at:
                logger.info(
                    "%s: fires between %s and %s were missed; running the latest only",
                    periodic.name,
                    fire_at,
                    latest,
                    extra={"task": periodic.name},
                )
                fire_at = latest
            if await self._fire(broker, periodic, fire_at, states.get(periodic.name)):
                fired.append(periodic.name)
            # Only once the fire is settled (a broker error above leaves it due).
            self._next[periodic.name] = periodic.schedule.next_after(max(fire_at, now))
        return fired

    async def _fire(
        self, broker: Broker, periodic: Periodic, fire_at: float, state: ScheduleState | None
    ) -> bool:
        if state is not None and state.last_fire >= fire_at:
            return False  # another scheduler has it
        if not periodic.overlap and state is not None and state.last_job is not None:
            previous = await broker.get(state.last_job)
            if previous is not None and previous.status in ACTIVE:
                if await broker.claim_fire(periodic.name, fire_at, None):
                    logger.warning(
                        "skipped %s: its previous run (job %s) is still %s",
                        periodic.name,
                        previous.id,
                        previous.status,
                        extra={"task": periodic.name, "job_id": previous.id},
                    )
                return False
        job = periodic.task.using(unique_key=f"periodic:{periodic.name}@{fire_at:.3f}").prepare()
        if not await broker.claim_fire(periodic.name, fire_at, job):
            return False
        logger.info(
            "fired %s (job %s)",
            periodic.name,
            job.id,
            extra={"task": periodic.name, "job_id": job.id},
        )
        return True

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Fire periodic tasks until :meth:`stop`; broker errors are logged and retried."""
        if not self.app.schedules:
            return
        broker = await self.app.aconnect()
        logger.info(
            "scheduler started for %d periodic tasks",
            len(self.app.schedules),
            extra={"tasks": list(self.app.schedules)},
        )
        prepared = False
        while not self._stop.is_set():
            try:
                if not prepared:
                    await self.prepare(broker)
                    prepared = True
                await self.tick(broker)
                wait = min(self._next.values(), default=0) - self.app.clock.now()
            except Exception as exc:
                logger.warning(
                    "scheduler tick failed (%s: %s); trying again",
                    type(exc).__name__,
                    exc,
                    extra={"error_type": type(exc).__name__},
                )
                wait = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), min(max(wait, 0.01), MAX_SLEEP))


def describe(periodic: Periodic) -> str:
    text = periodic.schedule.describe()
    flags = (("catch-up", periodic.catch_up), ("overlap", periodic.overlap))
    extras = [flag for flag, on in flags if on]
    return f"{text}, {', '.join(extras)}" if extras else text


__all__ = ["Periodic", "Scheduler", "check_no_arguments", "describe", "format_duration"]
