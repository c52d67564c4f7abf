"""``python manage.py afterwork_worker``: run a tasks backend's jobs until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from .....defaults import DEFAULT_CONCURRENCY, DEFAULT_GRACE_PERIOD
from .....errors import AfterworkError
from .....worker import Worker
from ... import get_backend

logger = logging.getLogger("afterwork.django")
_LEVELS = {0: logging.WARNING, 1: logging.INFO}


class Command(BaseCommand):
    help = (
        "Run the jobs of an afterwork tasks backend (TASKS[...]) until SIGTERM or SIGINT "
        "(twice: at once)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--backend", default="default", help="The TASKS alias to serve (default: default)."
        )
        parser.add_argument(
            "--queues",
            default=None,
            help="Comma-separated queues, served in this order (default: the backend's QUEUES).",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=DEFAULT_CONCURRENCY,
            help=f"Jobs run at once (default: {DEFAULT_CONCURRENCY}).",
        )
        parser.add_argument(
            "--burst", action="store_true", help="Exit once no job is ready or running."
        )
        parser.add_argument(
            "--grace-period",
            type=float,
            default=DEFAULT_GRACE_PERIOD,
            help=f"Seconds running jobs get at shutdown (default: {DEFAULT_GRACE_PERIOD:.0f}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not logging.getLogger("afterwork").hasHandlers():  # LOGGING says nothing of it
            logging.basicConfig(
                level=_LEVELS.get(options["verbosity"], logging.DEBUG),
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            )
        try:
            backend = get_backend(options["backend"])
        except (TypeError, LookupError) as exc:
            raise CommandError(str(exc)) from None
        except Exception as exc:  # the framework's InvalidTaskBackend, a bad OPTIONS
            raise CommandError(f"TASKS[{options['backend']!r}]: {exc}") from None
        queues = options["queues"]
        try:
            worker = backend.app.worker(
                queues=queues or backend.worker_queues(),
                concurrency=options["concurrency"],
                burst=options["burst"],
                grace_period=options["grace_period"],
            )
        except AfterworkError as exc:
            raise CommandError(str(exc)) from None
        try:
            asyncio.run(_serve(worker))
        except AfterworkError as exc:
            raise CommandError(str(exc)) from None


async def _serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        name = signal.Signals(signum).name
        if signals == 1:
            logger.info("%s: finishing running jobs (again to stop at once)", name)
        else:
            logger.warning("%s again: stopping now, putting running jobs back", name)
        worker.stop(immediately=signals > 1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await worker.run()
    finally:
        await worker.app.aclose()
