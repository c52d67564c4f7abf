"""The ``afterwork`` command: run workers and look at queues, jobs and dead letters.

APP is ``module.path:attribute`` naming an :class:`Afterwork` instance, as in
``afterwork worker myapp.jobs:jobs``. Every failure the user can fix prints one
line on stderr and exits non-zero, without a traceback.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import math
import os
import pwd
import shlex
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from .app import Afterwork
from .appload import load_app
from .brokers import Broker
from .defaults import DEFAULT_PROCESSES, URL_ENV_VAR
from .errors import AfterworkError, ConfigurationError
from .job import JobRecord, JobStatus, describe
from .report import (
    by_due_time,
    gather_periodic,
    gather_status,
    job_json,
    left_for_later,
    plural,
    render_job,
    render_jobs,
    render_periodic,
    render_status,
)
from .scheduler import Scheduler
from .supervisor import SUPERVISOR_FD_ENV, Supervisor
from .workeroptions import CommandLineOption, Count, Option, Switch, WorkerOptions

T = TypeVar("T")
logger = logging.getLogger("afterwork.cli")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; afterwork errors become one clear line instead of a traceback."""
    try:
        return asyncio.run(coro)
    except AfterworkError as exc:
        raise click.ClickException(str(exc)) from None


def _read(app: Afterwork, fn: Callable[[Broker], Coroutine[Any, Any, T]]) -> T:
    """Run a command that only looks: it must not create the store it looks at (an
    empty SQLite file where the user expected the app's)."""
    if not app.broker.exists():
        raise click.ClickException(
            f"no jobs here: {app.broker.describe()} does not exist. Run the command from "
            f"the directory the app runs in, or set {URL_ENV_VAR} to the app's broker URL"
        )
    return run(_with_broker(app, fn))


async def _with_broker(app: Afterwork, fn: Callable[[Broker], Coroutine[Any, Any, T]]) -> T:
    broker = await app.aconnect()
    try:
        return await fn(broker)
    finally:
        await app.aclose()


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


_log_level_option = click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)


def _click_option(option: CommandLineOption) -> Callable[[Callable[..., Any]], Any]:
    """The click option for a worker option: its value is read and checked by its
    definition (:mod:`afterwork.workeroptions`), so it is refused as from Python."""
    spec, accepts = option.spec, option.spec.accepts
    names = [option.flag, *([spec.short] if spec.short else []), option.name]
    if isinstance(accepts, Switch):
        return click.option(
            *names,
            is_flag=True,
            flag_value=accepts.flag_sets,
            default=option.default,
            help=spec.help,
        )

    def read(ctx: click.Context, _param: click.Parameter, text: str | None) -> Any:
        if text is None:
            return None
        try:
            return accepts.check(accepts.parse(text), option.flag)
        except ValueError:  # a ConfigurationError too: say it with the text as given
            message = f"{option.flag} must be {accepts.accepted}; got {text!r}"
            raise click.UsageError(message, ctx) from None

    if option.default is None:  # computed from other options: say how
        return click.option(
            *names,
            callback=read,
            metavar=accepts.metavar,
            help=f"{spec.help}  [default: {spec.default_help}]",
        )
    return click.option(
        *names,
        callback=read,
        metavar=accepts.metavar,
        default=accepts.unparse(option.default),
        show_default=True,
        help=spec.help,
    )


#: The command's own option, beside the Worker's: how many worker processes to run.
_PROCESSES = CommandLineOption(
    "processes",
    "--processes",
    DEFAULT_PROCESSES,
    Option(Count(1), "Worker processes, restarted if they die.", "--processes", "-p"),
)


def _worker_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """What a worker is started with, shared by `worker` and the unit `systemd` prints:
    every option of WorkerOptions that the command line offers, then the command's."""
    decorators: list[Callable[[Callable[..., Any]], Any]] = [
        _click_option(o) for o in [*WorkerOptions.command_line(), _PROCESSES]
    ]
    decorators.append(_log_level_option)
    for decorate in reversed(decorators):
        command = decorate(command)
    return command


def _checked(given: dict[str, Any]) -> WorkerOptions:
    """The worker options the flags give; each flag's value is checked as it is read,
    what depends on several (a heartbeat shorter than the lease) here."""
    try:
        return WorkerOptions(**given)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


def _worker_command(
    app_path: str, options: WorkerOptions, processes: int, log_level: str
) -> list[str]:
    """``afterwork worker`` with these options: what a supervisor's processes run, one
    process each, and what a systemd unit starts."""
    return [
        "worker",
        app_path,
        *options.argv(),
        "--processes",
        str(processes),
        "--log-level",
        log_level,
    ]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="afterwork")
def main() -> None:
    """afterwork: background jobs for Python web apps."""


# -- worker ---------------------------------------------------------------------------


@main.command()
@click.argument("app_path", metavar="APP")
@_worker_options
def worker(app_path: str, processes: int, log_level: str, **given: Any) -> None:
    """Run jobs from the app's queues until SIGTERM or SIGINT (twice: at once)."""
    _setup_logging(log_level)
    options = _checked(given)
    burst = options.burst
    # Set by a supervisor (--processes) in the processes it starts.
    lifeline = os.environ.pop(SUPERVISOR_FD_ENV, None)
    # Load the app and make the worker here, so a mistake fails once with a clear
    # message instead of in every supervised child, restarted forever.
    app = load_app(app_path)
    if lifeline is None:  # a supervisor's children would repeat it
        _say_where_jobs_are(app_path, app)
    try:
        # A burst drains what is there; firing schedules would feed it forever.
        the_worker = app.worker(options, scheduler=options.scheduler and not burst)
    except AfterworkError as exc:
        raise click.ClickException(str(exc)) from None
    if processes > 1:
        args = _worker_command(app_path, options, 1, log_level)  # each child is one process
        code = Supervisor(args, processes, options.grace_period, burst=burst).run()
        if burst:
            run(_with_broker(app, lambda b: _log_left_for_later(b, the_worker.queues)))
        sys.exit(code)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        _stop_on_signals(loop, lambda now: the_worker.stop(immediately=now))
        if lifeline is not None:
            fd = int(lifeline)

            def on_supervisor_gone() -> None:  # the pipe's write end closed
                loop.remove_reader(fd)
                logger.warning("the supervisor is gone: finishing running jobs, then exiting")
                the_worker.stop()

            loop.add_reader(fd, on_supervisor_gone)
        try:
            await the_worker.run()
            if burst and lifeline is None:  # a supervisor reports for all its processes
                await _log_left_for_later(app.broker, the_worker.queues)
        finally:
            await app.aclose()

    run(serve())


def _say_where_jobs_are(app_path: str, app: Afterwork) -> None:
    """The worker's first line: where its jobs are, so one started in the wrong
    directory (a new, empty SQLite file) is noticed at once."""
    broker = app.broker
    logger.info("afterwork worker for %s: jobs in %s", app_path, broker.describe())
    if not broker.exists():
        logger.warning(
            "%s does not exist yet, so this worker starts with no jobs; if the app's jobs are "
            "elsewhere, start the worker from the app's directory or set %s",
            broker.describe(),
            URL_ENV_VAR,
        )


def _stop_on_signals(
    loop: asyncio.AbstractEventLoop, stop: Callable[[bool], None], *, jobs: bool = True
) -> None:
    """SIGTERM/SIGINT stop gracefully (``stop(False)``); a second one stops at once."""
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        name = signal.Signals(signum).name
        if not jobs:
            logger.info("%s: stopping", name)
        elif signals == 1:
            logger.info("%s: finishing running jobs (again to stop at once)", name)
        else:
            logger.warning("%s again: stopping now, putting running jobs back", name)
        stop(signals > 1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


@main.command()
@click.argument("app_path", metavar="APP")
@_log_level_option
def scheduler(app_path: str, log_level: str) -> None:
    """Fire the app's periodic tasks, without running jobs.

    Every worker already runs a scheduler unless started with --no-scheduler;
    however many run, each fire becomes one job.
    """
    _setup_logging(log_level)
    app = load_app(app_path)
    if not app.schedules:
        raise click.ClickException(f"{app_path} has no periodic tasks (@jobs.periodic)")
    the_scheduler = Scheduler(app)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        _stop_on_signals(loop, lambda _now: the_scheduler.stop(), jobs=False)
        try:
            await the_scheduler.run()
        finally:
            await app.aclose()

    run(serve())


@main.command()
@click.argument("app_path", metavar="APP")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def periodic(app_path: str, as_json: bool) -> None:
    """The app's periodic tasks: schedule, next fire, last fire and its outcome."""
    app = load_app(app_path)
    if app.broker.exists():
        rows = run(_with_broker(app, lambda b: gather_periodic(app, b)))
    else:  # nothing has fired yet; the schedules need no store (nor create one)
        rows = run(gather_periodic(app, None))
    click.echo(json.dumps(rows, indent=2) if as_json else render_periodic(rows))


async def _log_left_for_later(broker: Broker, queues: list[str]) -> None:
    """After a burst: say how many jobs wait for a later time, which it did not run."""
    try:
        message = await left_for_later(broker, queues)
    except Exception as exc:
        logger.warning("could not count the jobs left for later: %s", exc)
        return
    if message:
        logger.info("%s", message)


# -- inspection -----------------------------------------------------------------------


@main.command()
@click.argument("app_path", metavar="APP")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(app_path: str, as_json: bool) -> None:
    """Queues with job counts, the next jobs to run, and live workers."""
    app = load_app(app_path)
    data = _read(app, lambda b: gather_status(b, app=app))
    click.echo(json.dumps(data, indent=2) if as_json else render_status(data))


@main.command()
@click.argument("app_path", metavar="APP")
@click.option(
    "--status",
    "status_",
    type=click.Choice([str(s) for s in JobStatus]),
    help="Only jobs in this status.",
)
@click.option("--queue", help="Only jobs in this queue.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def jobs(app_path: str, status_: str | None, queue: str | None, limit: int, as_json: bool) -> None:
    """List jobs, waiting ones in the order they will run."""
    app = load_app(app_path)
    wanted = JobStatus(status_) if status_ else None
    found = _read(app, lambda b: b.list_jobs(status=wanted, queue=queue, limit=limit))
    if wanted in (JobStatus.SCHEDULED, JobStatus.RETRYING):
        found = by_due_time(found)
    _echo_jobs(found, app.clock.now(), as_json)


def _echo_jobs(found: list[JobRecord], now: float, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([describe(j, now) for j in found], indent=2))
    else:
        click.echo(render_jobs(found, now))


@main.command()
@click.argument("app_path", metavar="APP")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def job(app_path: str, job_id: str, as_json: bool) -> None:
    """Show one job: its result if it succeeded, its error and traceback if it failed."""
    app = load_app(app_path)

    async def find(broker: Broker) -> JobRecord | None:
        [full_id] = await _full_ids(broker, [job_id])
        return await broker.get(full_id)

    found = _read(app, find)
    if found is None:
        raise click.ClickException(f"no job with id {job_id} (it may have expired)")
    now = app.clock.now()
    if as_json:
        click.echo(json.dumps(job_json(found, now, app.serializer), indent=2))
    else:
        click.echo(render_job(found, now, app.serializer))


async def _full_ids(broker: Broker, given: list[str]) -> list[str]:
    """Each id as given, or the one id it is the start of: people copy the first
    digits of an id from a log line. An id that matches nothing stays as given."""
    full = []
    for job_id in given:
        if await broker.get(job_id) is None:
            matches = await broker.ids_starting_with(job_id, 2)
            if len(matches) > 1:
                raise click.ClickException(
                    f"{job_id!r} is the start of more than one job id ({', '.join(matches)}, "
                    "...); give more of it"
                )
            job_id = matches[0] if matches else job_id
        full.append(job_id)
    return full


# -- dead letters -----------------------------------------------------------------------


@main.command()
@click.argument("app_path", metavar="APP")
@click.argument("action", type=click.Choice(["list", "retry", "purge"]))
@click.argument("job_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every dead letter (retry, purge).")
@click.option("--queue", help="Only dead letters from this queue (list).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table (list).")
def dlq(
    app_path: str,
    action: str,
    job_ids: tuple[str, ...],
    every: bool,
    queue: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The dead-letter queue: list it, retry jobs with fresh attempts, or purge them.

    \b
    afterwork dlq APP list [--queue Q] [--limit N] [--json]
    afterwork dlq APP retry ID [ID ...] | --all
    afterwork dlq APP purge ID [ID ...] | --all
    """
    app = load_app(app_path)
    if action == "list":
        found = _read(app, lambda b: b.list_jobs(status=JobStatus.FAILED, queue=queue, limit=limit))
        _echo_jobs(found, app.clock.now(), as_json)
        return
    if every == bool(job_ids):
        raise click.UsageError(f"give the job ids to {action}, or --all (not both)")
    ids = None if every else list(job_ids)

    async def act(broker: Broker) -> int:
        chosen = None if ids is None else await _full_ids(broker, ids)
        return await (broker.retry_failed(chosen) if action == "retry" else broker.purge(chosen))

    count = _read(app, act)
    click.echo(f"{plural(count, 'job')} {'queued again' if action == 'retry' else 'purged'}")
    if ids is not None and count < len(ids):
        missing = len(ids) - count
        raise click.ClickException(
            f"{missing} of the ids {'is' if missing == 1 else 'are'} not in the dead-letter queue"
        )


# -- deployment -------------------------------------------------------------------------


#: Seconds systemd waits beyond the grace period before it sends SIGKILL: time to
#: put unfinished jobs back and disconnect.
STOP_MARGIN = 15


@main.command()
@click.argument("app_path", metavar="APP")
@_worker_options
@click.option("--user", default=None, help="User the service runs as (default: you).")
def systemd(app_path: str, processes: int, log_level: str, user: str | None, **given: Any) -> None:
    """Print a systemd unit that runs this app's workers."""
    options = _checked(given)
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise click.ClickException(
                f"no user named {user!r} on this machine; the service would not start. "
                "Create the user first, or name an existing one with --user"
            ) from None
    load_app(app_path)
    worker_command = _worker_command(app_path, options, processes, log_level)
    command = shlex.join([sys.executable, "-m", "afterwork", *worker_command])
    name = app_path.partition(":")[0].split(".")[0]
    env = os.environ.get("AFTERWORK_URL")
    lines = [
        "[Unit]",
        f"Description=afterwork workers for {name}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={user or getpass.getuser()}",
        f"WorkingDirectory={os.getcwd()}",
        *([f"Environment=AFTERWORK_URL={env}"] if env else []),
        f"ExecStart={command}",
        "# SIGTERM lets running jobs finish within the grace period; a second one stops",
        "# them at once. systemd's default KillMode=control-group sends SIGTERM to every",
        "# process of the service, so worker processes started by --processes would get",
        "# it twice (from systemd and from their supervisor) and skip the grace period;",
        "# KillMode=mixed sends it to the main process alone, and SIGKILL to all that is",
        "# left after TimeoutStopSec (the grace period plus a margin).",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        f"TimeoutStopSec={math.ceil(options.grace_period) + STOP_MARGIN}",
        "Restart=on-failure",
        "RestartSec=2",
        "StandardOutput=journal",
        "StandardError=journal",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    click.echo("\n".join(lines))
    click.echo(
        f"\n# Save as /etc/systemd/system/{name}-worker.service, then:\n"
        f"#   sudo systemctl daemon-reload && sudo systemctl enable --now {name}-worker\n"
        f"#   journalctl -u {name}-worker -f",
        err=True,
    )


@main.command()
@click.option(
    "--url",
    default="sqlite:///afterwork-demo.db",
    show_default=True,
    help="Broker for the demo jobs.",
)
@click.option("--jobs", "count", default=60, show_default=True, type=click.IntRange(min=5))
@click.option("--concurrency", "-c", default=8, show_default=True, type=click.IntRange(min=1))
def demo(url: str, count: int, concurrency: int) -> None:
    """Enqueue a realistic mix of jobs, run a worker on them, and show the outcome."""
    from .demo import run_demo

    run(run_demo(url, count, concurrency))
