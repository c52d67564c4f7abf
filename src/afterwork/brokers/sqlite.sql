-- afterwork's SQLite schema and queries. A finished job keeps the worker that
-- ran its last attempt; a job back in line has none. One table holds every job; partial
-- indexes keep the claim query and the unique-key check fast however many
-- finished jobs wait for expiry. Times are REAL seconds since the epoch.
-- Job ids start with the time, so the id index grows at its end; stats and
-- listings scan the table, which costs the CLI milliseconds and spares every
-- enqueue an index update.

-- name: schema
CREATE TABLE IF NOT EXISTS afterwork_jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    payload BLOB NOT NULL,
    status TEXT NOT NULL,
    run_at REAL NOT NULL,
    enqueued_at REAL NOT NULL,
    max_attempts INTEGER NOT NULL,
    result_ttl REAL NOT NULL,
    timeout REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    unique_key TEXT,
    started_at REAL,
    finished_at REAL,
    worker TEXT,
    lease_until REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result BLOB,
    error TEXT,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS afterwork_jobs_ready
    ON afterwork_jobs (queue, priority DESC, run_at, seq)
    WHERE status IN ('scheduled', 'queued', 'retrying');
CREATE UNIQUE INDEX IF NOT EXISTS afterwork_jobs_unique
    ON afterwork_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'queued', 'retrying', 'running');
CREATE INDEX IF NOT EXISTS afterwork_jobs_leases
    ON afterwork_jobs (lease_until) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS afterwork_jobs_expiry
    ON afterwork_jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS afterwork_schedules (
    name TEXT PRIMARY KEY,
    last_fire REAL NOT NULL,
    last_job TEXT
);
CREATE TABLE IF NOT EXISTS afterwork_workers (
    id TEXT PRIMARY KEY,
    last_seen REAL NOT NULL,
    info BLOB NOT NULL
);

-- name: insert
INSERT INTO afterwork_jobs (
    id, task, queue, priority, payload, status, run_at, enqueued_at, max_attempts,
    result_ttl, timeout, attempts, unique_key
) VALUES (
    :id, :task, :queue, :priority, :payload, :status, :run_at, :enqueued_at, :max_attempts,
    :result_ttl, :timeout, :attempts, :unique_key
) ON CONFLICT DO NOTHING

-- name: find_unique
SELECT * FROM afterwork_jobs
WHERE unique_key = ? AND status IN ('scheduled', 'queued', 'retrying', 'running')

-- name: any_ready
SELECT 1 FROM afterwork_jobs
WHERE queue = ? AND status IN ('scheduled', 'queued', 'retrying') AND run_at <= ?
LIMIT 1

-- name: next_run_at
SELECT min(run_at) FROM afterwork_jobs
WHERE queue = ? AND status IN ('scheduled', 'queued', 'retrying')

-- name: claim
UPDATE afterwork_jobs
SET status = 'running', attempts = attempts + 1, worker = :worker,
    started_at = :now, lease_until = :lease_until
WHERE seq IN (
    SELECT seq FROM afterwork_jobs
    WHERE queue = :queue AND status IN ('scheduled', 'queued', 'retrying') AND run_at <= :now
    ORDER BY priority DESC, run_at, seq
    LIMIT :limit
)
RETURNING *

-- name: extend
UPDATE afterwork_jobs SET lease_until = :lease_until
WHERE id = :id AND status = 'running' AND worker = :worker AND cancel_requested = 0

-- name: settle_succeeded
UPDATE afterwork_jobs
SET status = 'succeeded', result = :result, error = NULL, finished_at = :now,
    expires_at = :now + result_ttl, lease_until = NULL
WHERE id = :id AND status = 'running' AND worker = :worker

-- name: settle_failed
UPDATE afterwork_jobs
SET status = 'failed', error = :error, finished_at = :now, expires_at = :now + :dead_letter_ttl,
    lease_until = NULL
WHERE id = :id AND status = 'running' AND worker = :worker

-- name: settle_cancelled
UPDATE afterwork_jobs
SET status = 'cancelled', error = coalesce(:error, error), finished_at = :now,
    expires_at = :now + result_ttl, lease_until = NULL
WHERE id = :id AND status = 'running' AND worker = :worker

-- name: settle_retry
UPDATE afterwork_jobs
SET status = 'retrying', run_at = :retry_at, error = :error, worker = NULL, lease_until = NULL
WHERE id = :id AND status = 'running' AND worker = :worker

-- name: settle_cancel_requested
-- A retry or requeue of a job whose cancel was requested cancels it instead.
UPDATE afterwork_jobs
SET status = 'cancelled', error = coalesce(:error, error), finished_at = :now,
    expires_at = :now + result_ttl, lease_until = NULL
WHERE id = :id AND status = 'running' AND worker = :worker AND cancel_requested = 1

-- name: settle_requeue
-- The attempt does not count; a later time and a reason come with a job whose task
-- the worker does not know.
UPDATE afterwork_jobs
SET status = CASE WHEN :retry_at > :now THEN 'scheduled' ELSE 'queued' END,
    run_at = CASE WHEN :retry_at > :now THEN :retry_at ELSE run_at END,
    error = coalesce(:error, error),
    attempts = max(attempts - 1, 0), worker = NULL, lease_until = NULL
WHERE id = :id AND status = 'running' AND worker = :worker

-- name: expired_leases
SELECT * FROM afterwork_jobs WHERE status = 'running' AND lease_until <= ?

-- name: lease_lost_requeue
UPDATE afterwork_jobs
SET status = 'queued', worker = NULL, lease_until = NULL
WHERE id = :id AND status = 'running' AND lease_until <= :now

-- name: lease_lost_fail
UPDATE afterwork_jobs
SET status = 'failed', error = :error, finished_at = :now, expires_at = :now + :dead_letter_ttl,
    lease_until = NULL
WHERE id = :id AND status = 'running' AND lease_until <= :now

-- name: lease_lost_cancel
UPDATE afterwork_jobs
SET status = 'cancelled', finished_at = :now, expires_at = :now + result_ttl,
    lease_until = NULL
WHERE id = :id AND status = 'running' AND lease_until <= :now

-- name: delete_expired
DELETE FROM afterwork_jobs
WHERE expires_at <= ? AND status IN ('succeeded', 'failed', 'cancelled')

-- name: get
SELECT * FROM afterwork_jobs WHERE id = ?

-- name: ids_from
SELECT id FROM afterwork_jobs WHERE id >= ? AND id < ? ORDER BY id LIMIT ?

-- name: stats
SELECT queue,
       CASE WHEN status IN ('scheduled', 'retrying') AND run_at <= :now THEN 'queued'
            ELSE status END AS effective,
       count(*)
FROM afterwork_jobs GROUP BY queue, effective

-- name: cancel_waiting
UPDATE afterwork_jobs
SET status = 'cancelled', finished_at = :now, expires_at = :now + result_ttl
WHERE id = :id AND status IN ('scheduled', 'queued', 'retrying')

-- name: cancel_running
UPDATE afterwork_jobs SET cancel_requested = 1 WHERE id = :id AND status = 'running'

-- name: retry_failed
UPDATE OR IGNORE afterwork_jobs
SET status = 'queued', attempts = 0, run_at = :now, finished_at = NULL, expires_at = NULL,
    cancel_requested = 0, worker = NULL
WHERE id = :id AND status = 'failed'

-- name: purge_failed
DELETE FROM afterwork_jobs WHERE id = :id AND status = 'failed'

-- name: failed_ids
SELECT id FROM afterwork_jobs WHERE status = 'failed'

-- name: upsert_worker
INSERT INTO afterwork_workers (id, last_seen, info) VALUES (?, ?, ?)
ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, info = excluded.info

-- name: delete_worker
DELETE FROM afterwork_workers WHERE id = ?

-- name: live_workers
SELECT info FROM afterwork_workers WHERE last_seen >= ? ORDER BY id

-- name: delete_stale_workers
DELETE FROM afterwork_workers WHERE last_seen < ?

-- name: claim_fire
-- The row changes only for a later fire, so of racing schedulers one wins.
INSERT INTO afterwork_schedules (name, last_fire, last_job) VALUES (:name, :fire_at, :job)
ON CONFLICT (name) DO UPDATE
SET last_fire = excluded.last_fire,
    last_job = coalesce(excluded.last_job, afterwork_schedules.last_job)
WHERE afterwork_schedules.last_fire < excluded.last_fire

-- name: schedule_states
SELECT name, last_fire, last_job FROM afterwork_schedules
