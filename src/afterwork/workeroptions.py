"""Every option of a worker, defined once for ``Worker(...)``, ``app.worker(...)`` and the CLI.

Each field of :class:`WorkerOptions` carries its default, the values it
accepts, its help text and, where the command line offers it, its flag.
``afterwork worker`` and ``afterwork systemd`` build their options from these
fields, and write the command lines they pass on (to the processes a
supervisor starts, into a systemd unit) from a :class:`WorkerOptions`, so an
option added here is everywhere at once, and a value is refused the same way
from Python and from the command line.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, NamedTuple

from .defaults import (
    DEFAULT_BLOCK,
    DEFAULT_CONCURRENCY,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_LEASE,
    DEFAULT_QUEUE,
    DEFAULT_UNKNOWN_TASK_WAIT,
)
from .errors import ConfigurationError


@dataclass(frozen=True)
class Count:
    """A whole number, ``minimum`` or more: a bool, a float or a string is not one."""

    minimum: int
    metavar: ClassVar[str] = "N"

    def check(self, value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < self.minimum:
            raise ConfigurationError(f"{name} must be {self.accepted}; got {value!r}")
        return value

    def parse(self, text: str) -> int:
        return int(text)  # ValueError if it is not one

    def unparse(self, value: int) -> str:
        return str(value)

    @property
    def accepted(self) -> str:
        return f"a whole number, {self.minimum} or more"


@dataclass(frozen=True)
class Seconds:
    """A finite number of seconds, more than 0 (``positive``) or 0 or more; ``optional``
    allows None, for a default computed from other options."""

    positive: bool
    optional: bool = False
    metavar: ClassVar[str] = "SECONDS"

    def check(self, value: Any, name: str) -> float | None:
        if value is None and self.optional:
            return None
        number = not isinstance(value, bool) and isinstance(value, int | float)
        if not number or not math.isfinite(value) or value < 0 or (self.positive and value == 0):
            raise ConfigurationError(f"{name} must be {self.accepted}; got {value!r}")
        return float(value)

    def parse(self, text: str) -> float:
        return float(text)  # ValueError if it is not one

    def unparse(self, value: float) -> str:
        return str(int(value)) if value.is_integer() else repr(value)

    @property
    def accepted(self) -> str:
        return f"a number of seconds, {'more than 0' if self.positive else '0 or more'}"


@dataclass(frozen=True)
class Queues:
    """Queue names in the order they are served: a list, or one comma-separated string.
    Each is a name a task can use (non-empty, no commas); repeats are dropped."""

    metavar: ClassVar[str] = "QUEUES"
    accepted: ClassVar[str] = (
        "one or more queue names (non-empty, without commas), as a list or a comma-separated string"
    )

    def check(self, value: Any, name: str) -> tuple[str, ...]:
        names = [part.strip() for part in value.split(",")] if isinstance(value, str) else value
        valid = isinstance(names, list | tuple) and names
        if not valid or not all(isinstance(q, str) and q and "," not in q for q in names):
            raise ConfigurationError(f"{name} must be {self.accepted}; got {value!r}")
        return tuple(dict.fromkeys(names))

    def parse(self, text: str) -> str:
        return text

    def unparse(self, value: Sequence[str]) -> str:
        return ",".join(value)


@dataclass(frozen=True)
class Switch:
    """True or False; on the command line, a flag that sets it to ``flag_sets``."""

    flag_sets: bool = True
    accepted: ClassVar[str] = "True or False"

    def check(self, value: Any, name: str) -> bool:
        if not isinstance(value, bool):
            raise ConfigurationError(f"{name} must be {self.accepted}; got {value!r}")
        return value


@dataclass(frozen=True)
class Option:
    """How one worker option is checked, explained and written on the command line."""

    accepts: Count | Seconds | Queues | Switch
    help: str
    #: Its spelling on the command line; None: Python only.
    flag: str | None = None
    short: str | None = None
    #: The default in words, where it is computed from other options.
    default_help: str | None = None


class CommandLineOption(NamedTuple):
    """A worker option the command line offers."""

    name: str
    flag: str
    default: Any
    spec: Option


def _option(
    default: Any,
    accepts: Count | Seconds | Queues | Switch,
    help: str,
    *,
    flag: str | None = None,
    short: str | None = None,
    default_help: str | None = None,
) -> Any:
    return field(
        default=default, metadata={"option": Option(accepts, help, flag, short, default_help)}
    )


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    """How a worker runs. Every option is checked when the options are made, so a
    worker that exists is one that can run.

    ``Worker(app, concurrency=20)`` and ``app.worker(...)`` make one from their
    keyword arguments (:meth:`of`, which refuses a misspelt name), the CLI from
    its flags. Durations are in seconds.
    """

    queues: Sequence[str] = _option(
        (DEFAULT_QUEUE,),
        Queues(),
        "Comma-separated queues, served in this order.",
        flag="--queues",
        short="-q",
    )
    concurrency: int = _option(
        DEFAULT_CONCURRENCY,
        Count(1),
        "Jobs run at once per process.",
        flag="--concurrency",
        short="-c",
    )
    grace_period: float = _option(
        DEFAULT_GRACE_PERIOD,
        Seconds(positive=False),
        "Seconds running jobs get to finish on SIGTERM.",
        flag="--grace-period",
    )
    lease: float = _option(
        DEFAULT_LEASE,
        Seconds(positive=True),
        "Seconds a claimed job stays a worker's unless renewed; "
        "a killed worker's jobs run again this soon.",
        flag="--lease",
    )
    heartbeat: float | None = _option(
        None,
        Seconds(positive=True, optional=True),
        "Seconds between lease renewals; shorter than the lease.",
        flag="--heartbeat",
        default_help="a third of the lease, at most 1",
    )
    unknown_task_wait: float = _option(
        DEFAULT_UNKNOWN_TASK_WAIT,
        Seconds(positive=False),
        "Seconds a job whose task this worker does not know is put back for "
        "another worker before it is dead-lettered.",
        flag="--unknown-task-wait",
    )
    burst: bool = _option(False, Switch(), "Exit once nothing is ready or running.", flag="--burst")
    scheduler: bool = _option(
        True,
        Switch(flag_sets=False),
        "Do not fire periodic tasks from this worker (off in --burst too).",
        flag="--no-scheduler",
    )
    maintenance_interval: float | None = _option(
        None,
        Seconds(positive=True, optional=True),
        "Seconds between putting expired leases back and dropping expired results.",
        default_help="the lease, at most 5",
    )
    block: float = _option(
        DEFAULT_BLOCK,
        Seconds(positive=True),
        "Longest wait on the broker for a job before looking again; engines that can "
        "wake a worker return as soon as one arrives.",
    )

    def __post_init__(self) -> None:
        for option, spec in _specs():
            value = spec.accepts.check(getattr(self, option), f"worker option {option}")
            object.__setattr__(self, option, value)  # normalized: 10 -> 10.0, "a,b" -> (a, b)
        if self.heartbeat is not None and self.heartbeat >= self.lease:
            raise ConfigurationError(
                f"worker option heartbeat ({self.heartbeat:g}s) must be shorter than the "
                f"lease ({self.lease:g}s), or leases expire"
            )

    @classmethod
    def of(cls, options: Mapping[str, Any], base: WorkerOptions | None = None) -> WorkerOptions:
        """``base`` (the defaults if None) with ``options`` changed, from keyword
        arguments: a name that is not an option is refused with the closest one."""
        known = [name for name, _ in _specs()]
        for name in options:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
                raise ConfigurationError(f"unknown worker option {name!r}; {hint}")
        if base is None:
            return cls(**options)
        return replace(base, **options) if options else base

    @staticmethod
    def command_line() -> list[CommandLineOption]:
        """The options the command line offers, in order."""
        return [
            CommandLineOption(f.name, spec.flag, f.default, spec)
            for f in fields(WorkerOptions)
            if (spec := f.metadata["option"]).flag is not None
        ]

    def argv(self) -> list[str]:
        """These options as command-line flags, every one the command line offers: a
        value where there is one, a switch where it is set."""
        args: list[str] = []
        for option in self.command_line():
            value, accepts = getattr(self, option.name), option.spec.accepts
            if isinstance(accepts, Switch):
                args += [option.flag] if value is accepts.flag_sets else []
            elif value is not None:
                args += [option.flag, accepts.unparse(value)]
        return args


def _specs() -> Iterator[tuple[str, Option]]:
    for f in fields(WorkerOptions):
        yield f.name, f.metadata["option"]
