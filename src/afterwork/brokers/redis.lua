-- afterwork's Redis scripts. Every change to a job's state is one of these, so
-- it happens atomically: no other client sees a job half claimed or half settled.
--
-- Key schema. P is the app's key prefix (?prefix=..., default "afterwork"), Q a
-- queue name. All keys of one queue share the hash tag {P:Q}, so on Redis
-- Cluster a queue lives in one slot and its scripts run on one node.
--
--   {P:Q}:ready         zset    job id -> (100 - priority) * 1e13 + run_at in ms.
--                               ZPOPMIN takes the highest priority, then the
--                               earliest run time; equal scores pop in id order,
--                               and ids are time-ordered, so ties stay FIFO.
--   {P:Q}:scheduled     zset    job id -> run_at: delayed jobs (status scheduled)
--   {P:Q}:retrying      zset    job id -> run_at: jobs waiting out their backoff
--   {P:Q}:running       zset    job id -> lease_until
--   {P:Q}:succeeded     zset    job id -> finished_at
--   {P:Q}:cancelled     zset    job id -> finished_at
--   {P:Q}:failed        zset    job id -> finished_at: the dead-letter queue
--   {P:Q}:expiry        zset    job id -> expires_at, for every finished job;
--                               recover() deletes what is due
--   {P:Q}:job:<id>      hash    the job: a field per JobRecord field that a script
--                               reads or changes, absent when None; the fields no
--                               script reads, packed in one (spec); see
--                               redis_codec.py. Times are the caller's clock
--                               readings as sent, so they read back exactly. Gets PEXPIRE (its TTL plus a grace) when
--                               it finishes, in case recover() never runs.
--   {P:Q}:unique:<key>  string  the id of the active job that holds a unique key
--   {P:Q}:waiters:<id>  string  how many wait() calls want to hear of the job's end
--   {P:Q}:done:<id>     list    one token per waiter, pushed when the job finishes
--   {P:Q}:schedule:<n>  hash    last_fire, last_job of periodic schedule n, kept in
--                               the slot of its task's queue so a fire and its job
--                               are recorded in one script
--
-- Keys outside any queue. On a cluster they are in other slots, so no script
-- touches them: the broker writes them in the same pipeline as the script calls.
-- On a single server, where every key is in reach, enqueue and claim_fire push
-- the wake tokens themselves, so an enqueue is one command.
--
--   {P}:queues          set     every queue name used, for the read side and recover()
--   {P}:wake:<Q>        list    wake-up tokens, trimmed to 64: whatever makes a job
--                               ready or due later (enqueue, retry, requeue, a lost
--                               lease, a retried dead letter) pushes one; an idle
--                               worker BLPOPs the lists of the queues it serves
--                               (one slot, so one command even on a cluster)
--   {P}:schedules       hash    schedule name -> the queue whose slot holds its state
--   {P}:workers         zset    worker id -> last_seen
--   {P}:worker:<id>     string  the worker's WorkerInfo as JSON, expiring
--
-- Calling convention: KEYS are the per-queue sets in the order listed (ready,
-- scheduled, retrying, running, succeeded, cancelled, failed, expiry), as many as
-- the script uses (enqueue, claim_fire three; claim, extend four), and
-- ARGV[1] is "{P:Q}:", from which per-job key names are built; those share the
-- queue's hash tag, so they are in the same slot as the declared keys.
--
-- Every number read from a job hash goes through num(), so a field that was
-- overwritten with garbage cannot make a script fail (and with it every claim on
-- the queue); the broker dead-letters such a job when it decodes the claim.
--
-- The file is split on "-- name:" lines. On a single server (Redis 7 or newer)
-- the scripts are one function library: "common" once, then each script as a
-- function that starts with bind(KEYS, ARGV); loaded once, a call pays nothing
-- for the shared part. On a cluster (whose client would ask the server for an
-- FCALL's keys on every call) or an older server, each script is sent for
-- EVALSHA with "common" and the bind in front.

-- name: common
local READY, SCHEDULED, RETRYING, RUNNING, SUCCEEDED, CANCELLED, FAILED, EXPIRY
local BASE, WAKE, ARGS

-- Per call, so kept to assignments: the enqueue of one job is mostly this call.
local function bind(keys, argv)
  READY, SCHEDULED, RETRYING, RUNNING = keys[1], keys[2], keys[3], keys[4]
  SUCCEEDED, CANCELLED, FAILED, EXPIRY = keys[5], keys[6], keys[7], keys[8]
  BASE = argv[1]
  -- enqueue and claim_fire only: on a single server, the queue's wake list; '' on
  -- a cluster.
  WAKE = argv[2]
  ARGS = argv  -- for helpers: in a function library ARGV is no global
end

local WAITING = {queued = true, scheduled = true, retrying = true}
local DONE = {succeeded = true, cancelled = true, failed = true}
local MAX_WAKE_TOKENS = 64

local function num(value, default)
  local n = tonumber(value)
  if n == nil or n ~= n then
    return default
  end
  return n
end

local function job_key(id)
  return BASE .. 'job:' .. id
end

-- The ready score: priority first (high first), then run time. It stays below
-- 2^53, so whole milliseconds are exact: 200 * 1e13 plus ms until the year 2286.
local function ready_score(priority, run_at)
  return (100 - num(priority, 0)) * 1e13 + num(run_at, 0) * 1000
end

local function make_ready(id, job)
  local f = redis.call('HMGET', job, 'priority', 'run_at')
  redis.call('ZADD', READY, ready_score(f[1], f[2]), id)
end

local function set_error(job, err)
  if err == '' then
    redis.call('HDEL', job, 'error')
  else
    redis.call('HSET', job, 'error', err)
  end
end

-- set_error as the fields to write and to delete, for finish().
local function error_change(err)
  if err == '' then
    return {}, {'error'}
  end
  return {'error', err}, {}
end

local function release_unique(id, unique)
  if unique then
    local key = BASE .. 'unique:' .. unique
    if redis.call('GET', key) == id then
      redis.call('DEL', key)
    end
  end
end

local function notify_waiters(id)
  local waiters = BASE .. 'waiters:' .. id
  local count = num(redis.call('GET', waiters), 0)
  if count > 0 then
    local done = BASE .. 'done:' .. id
    for _ = 1, math.min(count, MAX_WAKE_TOKENS) do
      redis.call('LPUSH', done, '1')
    end
    redis.call('PEXPIRE', done, 60000)
    redis.call('DEL', waiters)
  end
end

-- Finish a job: it leaves the running set (or with `waiting`, the waiting sets),
-- is kept ttl seconds in its status's set, gives up its unique key and wakes
-- whoever waits for it. `set` and `drop` (optional) are more fields to write and
-- delete with it; `unique` is its unique key if the caller read it (false: it
-- has none; nil: read it here).
local function finish(id, job, status, now_text, ttl, grace, waiting, set, drop, unique)
  local expires_at = tonumber(now_text) + ttl
  redis.call('HSET', job, 'status', status, 'finished_at', now_text, 'expires_at', expires_at,
    unpack(set or {}))
  drop = drop or {}
  if waiting then
    redis.call('ZREM', READY, id)
    redis.call('ZREM', SCHEDULED, id)
    redis.call('ZREM', RETRYING, id)
  else
    drop[#drop + 1] = 'lease_until'  -- the worker stays: it ran the last attempt
    redis.call('ZREM', RUNNING, id)
  end
  if #drop > 0 then
    redis.call('HDEL', job, unpack(drop))
  end
  local finished = FAILED
  if status == 'succeeded' then
    finished = SUCCEEDED
  elseif status == 'cancelled' then
    finished = CANCELLED
  end
  redis.call('ZADD', finished, now_text, id)
  redis.call('ZADD', EXPIRY, expires_at, id)
  if unique == nil then
    unique = redis.call('HGET', job, 'unique_key')
  end
  release_unique(id, unique)
  redis.call('PEXPIRE', job, math.max(math.ceil((ttl + grace) * 1000), 1000))
  notify_waiters(id)
end

-- Put a job back in line: ready, or (if its run_at is still ahead) scheduled or retrying.
local function put_back(id, job, status, now)
  redis.call('HSET', job, 'status', status)
  redis.call('HDEL', job, 'worker', 'lease_until')
  redis.call('ZREM', RUNNING, id)
  local run_at = num(redis.call('HGET', job, 'run_at'), 0)
  if run_at > now then
    redis.call('ZADD', status == 'retrying' and RETRYING or SCHEDULED, run_at, id)
  else
    make_ready(id, job)
  end
end

-- Store a new job. ARGV[i..]: id, target ('ready' | 'scheduled' | 'retrying'),
-- unique key ('' for none), the fields every job has (status, run_at, priority,
-- result_ttl, spec, payload), n, then n field, value arguments for the fields it
-- has beside (see redis_codec.py).
-- Returns 1 when stored, or {0, id, fields} of the job that stands instead: the
-- one already stored under this id, or the active job holding the unique key.
-- The second value is where the next job's arguments start.
local function store(i)
  local id, unique = ARGS[i], ARGS[i + 2]
  local extra = i + 10
  local next_job = extra + tonumber(ARGS[i + 9])
  local job = job_key(id)
  if redis.call('EXISTS', job) == 1 then
    return {0, id, redis.call('HGETALL', job)}, next_job
  end
  if unique ~= '' then
    local key = BASE .. 'unique:' .. unique
    local twin = redis.call('GET', key)
    if twin then
      local twin_job = job_key(twin)
      local status = redis.call('HGET', twin_job, 'status')
      if WAITING[status] or status == 'running' then
        return {0, twin, redis.call('HGETALL', twin_job)}, next_job
      end
    end
    redis.call('SET', key, id)
  end
  local run_at, priority = ARGS[i + 4], ARGS[i + 5]
  redis.call('HSET', job, 'status', ARGS[i + 3], 'run_at', run_at, 'priority', priority,
    'result_ttl', ARGS[i + 6], 'spec', ARGS[i + 7], 'payload', ARGS[i + 8],
    unpack(ARGS, extra, next_job - 1))
  local target = ARGS[i + 1]
  if target == 'ready' then
    redis.call('ZADD', READY, ready_score(priority, run_at), id)
  else
    redis.call('ZADD', target == 'retrying' and RETRYING or SCHEDULED, run_at, id)
  end
  return 1, next_job
end

-- Wake idle workers for `count` new ready jobs (on a single server; on a cluster
-- the wake list is in another slot and the broker pushes beside the script).
local function wake(count)
  if WAKE == '' or count == 0 then
    return
  end
  local pushed
  if count == 1 then
    pushed = redis.call('LPUSH', WAKE, '1')
  else
    local tokens = {}
    for n = 1, math.min(count, MAX_WAKE_TOKENS) do
      tokens[n] = '1'
    end
    pushed = redis.call('LPUSH', WAKE, unpack(tokens))
  end
  if pushed > MAX_WAKE_TOKENS then
    redis.call('LTRIM', WAKE, 0, MAX_WAKE_TOKENS - 1)
  end
end

-- name: enqueue
-- ARGV: base, wake, then what store() takes for each job. Returns store's reply
-- for each.
local replies = {}
local i = 3
while i <= #ARGV do
  replies[#replies + 1], i = store(i)
end
wake(#replies)
return replies

-- name: claim_fire
-- ARGV: base, wake, schedule name, fire_at, has_job, then (with a job) what
-- store() takes. Records the fire unless one at or after fire_at is
-- recorded, and stores its job in the same step. Returns {0} if another
-- scheduler won, {1} or {1, store's reply}.
local key = BASE .. 'schedule:' .. ARGV[3]
local last = tonumber(redis.call('HGET', key, 'last_fire'))
if last and last >= tonumber(ARGV[4]) then
  return {0}
end
redis.call('HSET', key, 'last_fire', ARGV[4])
if ARGV[5] ~= '1' then
  return {1}
end
redis.call('HSET', key, 'last_job', ARGV[6])
local reply = store(6)
wake(1)
return {1, reply}

-- name: claim
-- ARGV: base, now, worker, lease_until, limit, promote_max.
-- Moves due delayed and retrying jobs to ready, then claims up to `limit` ready
-- jobs: running, leased to the worker, the attempt counted. Returns {{{id, job
-- fields}...}, next_due}: the fields as they were before the claim (the broker
-- applies the claim's changes, which it knows, to what it reads); next_due (when
-- nothing was claimed) is the run time of the earliest delayed or retrying job,
-- so the caller knows how long to sleep.
local now_text, worker, lease_until = ARGV[2], ARGV[3], ARGV[4]
local limit = tonumber(ARGV[5])
for _, set in ipairs({SCHEDULED, RETRYING}) do
  local due = redis.call('ZRANGEBYSCORE', set, '-inf', now_text, 'LIMIT', 0, ARGV[6])
  for _, id in ipairs(due) do
    redis.call('ZREM', set, id)
    make_ready(id, job_key(id))
  end
end
local claimed = {}
while #claimed < limit do
  local popped = redis.call('ZPOPMIN', READY, limit - #claimed)
  if #popped == 0 then
    break
  end
  for i = 1, #popped, 2 do
    local id = popped[i]
    local job = job_key(id)
    local fields = redis.call('HGETALL', job)
    local status, attempts = '', 0
    for k = 1, #fields, 2 do
      local name = fields[k]
      if name == 'status' then
        status = fields[k + 1]
      elseif name == 'attempts' then
        attempts = num(fields[k + 1], 0)
      end
    end
    -- A hash that is gone or already running or finished is a stale entry: drop it.
    -- A hash with a status we do not know is claimed, so the broker dead-letters it.
    if #fields > 0 and status ~= 'running' and not DONE[status] then
      redis.call('HSET', job, 'status', 'running', 'attempts', attempts + 1,
        'worker', worker, 'started_at', now_text, 'lease_until', lease_until)
      redis.call('ZADD', RUNNING, lease_until, id)
      claimed[#claimed + 1] = {id, fields}
    end
  end
end
local next_due = false
if #claimed == 0 then
  for _, set in ipairs({SCHEDULED, RETRYING}) do
    local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
    if first[2] and (not next_due or tonumber(first[2]) < tonumber(next_due)) then
      next_due = first[2]
    end
  end
end
return {claimed, next_due}

-- name: extend
-- ARGV: base, worker, lease_until, job ids...
-- Renews the leases the worker holds; returns the ids it must stop running.
local worker, lease_until = ARGV[2], ARGV[3]
local lost = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local job = job_key(id)
  local f = redis.call('HMGET', job, 'status', 'worker', 'cancel_requested')
  if f[1] == 'running' and f[2] == worker and f[3] ~= '1' then
    redis.call('HSET', job, 'lease_until', lease_until)
    redis.call('ZADD', RUNNING, lease_until, id)
  else
    lost[#lost + 1] = id
  end
end
return lost

-- name: settle
-- ARGV: base, now, dead_letter_ttl, grace, then seven per outcome: id, worker,
--       kind, has_result, result, error ('' for none), retry_at.
-- Applies each outcome whose worker still holds the job's lease; returns how many.
local now_text, dead_letter_ttl, grace = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = tonumber(now_text)

local function settle(id, worker, kind, has_result, result, err, retry_at)
  local job = job_key(id)
  local f = redis.call('HMGET', job, 'status', 'worker', 'cancel_requested', 'result_ttl',
    'unique_key')
  if f[1] ~= 'running' or f[2] ~= worker then
    return 0
  end
  local result_ttl, unique = num(f[4], 86400), f[5]
  local again = kind == 'retry' or kind == 'requeue'
  if kind == 'succeeded' then
    if has_result == '1' then
      finish(id, job, 'succeeded', now_text, result_ttl, grace, false, {'result', result},
        {'error'}, unique)
    else
      finish(id, job, 'succeeded', now_text, result_ttl, grace, false, {}, {'result', 'error'},
        unique)
    end
  elseif kind == 'failed' then
    local set, drop = error_change(err)
    finish(id, job, 'failed', now_text, dead_letter_ttl, grace, false, set, drop, unique)
  elseif kind == 'cancelled' or (again and f[3] == '1') then
    -- A retry or requeue of a job whose cancel was requested cancels it: it never runs again.
    local set = err ~= '' and {'error', err} or {}
    finish(id, job, 'cancelled', now_text, result_ttl, grace, false, set, {}, unique)
  elseif kind == 'retry' then
    set_error(job, err)
    redis.call('HSET', job, 'run_at', retry_at)
    put_back(id, job, 'retrying', now)
  elseif kind == 'requeue' then
    -- The attempt did not happen as far as the job is concerned. A later time and a
    -- reason come with a job whose task the worker does not know.
    local attempts = num(redis.call('HGET', job, 'attempts'), 0)
    redis.call('HSET', job, 'attempts', math.max(attempts - 1, 0))
    if err ~= '' then
      redis.call('HSET', job, 'error', err)
    end
    if tonumber(retry_at) > now then
      redis.call('HSET', job, 'run_at', retry_at)
      put_back(id, job, 'scheduled', now)
    else
      put_back(id, job, 'queued', now)
    end
  else
    return 0
  end
  return 1
end

local applied = 0
for i = 5, #ARGV, 7 do
  applied = applied + settle(unpack(ARGV, i, i + 6))
end
return applied

-- name: recover
-- ARGV: base, now, max.
-- Deletes finished jobs whose time is up; returns {id, fields} of each job whose
-- lease expired. The broker decides what each lost lease means (by the rule every
-- broker shares) and applies it with lease_lost.
local now_text, max = ARGV[2], ARGV[3]
for _, id in ipairs(redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', now_text, 'LIMIT', 0, max)) do
  local job = job_key(id)
  local status = redis.call('HGET', job, 'status')
  redis.call('ZREM', EXPIRY, id)
  if not (WAITING[status] or status == 'running') then
    redis.call('DEL', job)
    redis.call('ZREM', SUCCEEDED, id)
    redis.call('ZREM', CANCELLED, id)
    redis.call('ZREM', FAILED, id)
  end
end
local lost = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', RUNNING, '-inf', now_text, 'LIMIT', 0, max)) do
  lost[#lost + 1] = {id, redis.call('HGETALL', job_key(id))}
end
return lost

-- name: lease_lost
-- ARGV: base, id, now, status ('queued' | 'failed' | 'cancelled'), error, dead_letter_ttl, grace.
-- Applies what recover decided for a job whose lease ran out, if it still has.
local id, now_text, status, err = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local job = job_key(id)
if redis.call('EXISTS', job) == 0 then
  redis.call('ZREM', RUNNING, id)
  return 0
end
local f = redis.call('HMGET', job, 'status', 'lease_until', 'result_ttl')
local now = tonumber(now_text)
if f[1] ~= 'running' or num(f[2], 0) > now then
  return 0
end
if status == 'queued' then
  put_back(id, job, 'queued', now)
elseif status == 'failed' then
  local set, drop = error_change(err)
  finish(id, job, 'failed', now_text, tonumber(ARGV[6]), tonumber(ARGV[7]), false, set, drop)
else
  finish(id, job, 'cancelled', now_text, num(f[3], 86400), tonumber(ARGV[7]))
end
return 1

-- name: cancel
-- ARGV: base, id, now, grace.
-- Returns 2 if the job was waiting and is now cancelled, 1 if it runs and its
-- worker is asked to stop it (through extend), 0 if it finished or does not exist.
local id, now_text = ARGV[2], ARGV[3]
local job = job_key(id)
local f = redis.call('HMGET', job, 'status', 'result_ttl')
if WAITING[f[1]] then
  finish(id, job, 'cancelled', now_text, num(f[2], 86400), tonumber(ARGV[4]), true)
  return 2
elseif f[1] == 'running' then
  redis.call('HSET', job, 'cancel_requested', '1')
  return 1
end
return 0

-- name: retry_failed
-- ARGV: base, id, now.
-- Queues a dead letter again with fresh attempts; returns 1 if it did. A dead
-- letter whose unique key an active job holds again is left alone.
local id, now_text = ARGV[2], ARGV[3]
local job = job_key(id)
local f = redis.call('HMGET', job, 'status', 'unique_key')
if f[1] ~= 'failed' then
  return 0
end
if f[2] then
  local key = BASE .. 'unique:' .. f[2]
  local twin = redis.call('GET', key)
  if twin and twin ~= id then
    local status = redis.call('HGET', job_key(twin), 'status')
    if WAITING[status] or status == 'running' then
      return 0
    end
  end
  redis.call('SET', key, id)
end
redis.call('HSET', job, 'status', 'queued', 'attempts', 0, 'run_at', now_text)
redis.call('HDEL', job, 'cancel_requested', 'finished_at', 'expires_at', 'worker')
redis.call('ZREM', FAILED, id)
redis.call('ZREM', EXPIRY, id)
redis.call('PERSIST', job)
make_ready(id, job)
return 1

-- name: purge
-- ARGV: base, id. Deletes a dead letter; returns 1 if it did.
local id = ARGV[2]
local job = job_key(id)
if redis.call('HGET', job, 'status') ~= 'failed' then
  return 0
end
redis.call('DEL', job)
redis.call('ZREM', FAILED, id)
redis.call('ZREM', EXPIRY, id)
return 1
