"""Every default afterwork uses, in one place, each with the reason for its value."""

from __future__ import annotations

#: Broker used when neither ``Afterwork(url)`` nor ``AFTERWORK_URL`` names one:
#: a file next to the app, so the first run needs no server.
DEFAULT_URL = "sqlite:///afterwork.db"
URL_ENV_VAR = "AFTERWORK_URL"

DEFAULT_QUEUE = "default"
MIN_PRIORITY = -100
MAX_PRIORITY = 100
DEFAULT_PRIORITY = 0

#: Results (and cancelled jobs) are kept this long after the job finishes.
DEFAULT_RESULT_TTL = 24 * 3600.0
#: Dead letters are kept a week so someone can look at them, then dropped.
DEFAULT_DEAD_LETTER_TTL = 7 * 24 * 3600.0
#: Larger payloads belong in storage, with a reference in the job.
DEFAULT_MAX_PAYLOAD_SIZE = 1024 * 1024
#: In-process jobs waiting at once before ``enqueue`` raises TaskQueueFull:
#: past this the app is overloaded and a growing queue only hides it.
DEFAULT_MAX_PENDING = 10_000

DEFAULT_CONCURRENCY = 10
#: Worker processes ``afterwork worker`` runs; more are started, and restarted if
#: they die, by a supervisor.
DEFAULT_PROCESSES = 1
#: A claimed job is the worker's for this long unless renewed; a killed
#: worker's jobs run again this soon after it died.
DEFAULT_LEASE = 15.0
#: How often a worker renews leases, announces itself and notices cancels.
DEFAULT_HEARTBEAT = 1.0
#: A worker not heard from for this long is no longer listed as alive.
WORKER_STALE_AFTER = 10.0
#: ... and after this long its entry is deleted (a killed worker never says goodbye).
WORKER_FORGOTTEN_AFTER = 60.0
#: How often a worker puts expired leases back and drops expired results.
DEFAULT_MAINTENANCE_INTERVAL = 5.0
#: A job whose task a worker does not know goes back to its queue for a worker that
#: knows it (a rolling deploy: an old worker meets a new task) for this long before
#: it is dead-lettered.
DEFAULT_UNKNOWN_TASK_WAIT = 600.0
#: ... and it is offered again after half the time it has waited, within these bounds.
UNKNOWN_TASK_RECHECK = (1.0, 30.0)
#: On SIGTERM, running jobs get this long to finish before they are put back.
DEFAULT_GRACE_PERIOD = 25.0
#: Longest a worker waits on the broker before looking again; engines with a
#: wake-up primitive return as soon as work arrives.
DEFAULT_BLOCK = 1.0
#: SQLite has no cross-process notification: other processes' writes are
#: noticed by checking ``PRAGMA data_version`` this often.
SQLITE_POLL_INTERVAL = 0.02
SQLITE_BUSY_TIMEOUT_MS = 10_000
