-- Statements of the PostgreSQL broker (chervil/brokers/postgres.py).
--
-- Placeholders filled once per broker with psycopg.sql (never by string concatenation):
--   {s}    the broker's schema, as a quoted identifier
--   {now}  the current time in epoch seconds: the server's clock in production
--          (statement_timestamp()), or %(now)s when the broker runs on an injected
--          test clock
-- Parameters are %(name)s. Every verb is one statement, so one round trip and one
-- (implicit) transaction; wake-ups (NOTIFY) and terminal counts come from the triggers
-- in postgres_0001_initial.sql, inside that same transaction.
--
-- Statements on leased jobs (extend, finish, release, recover_given) find their rows by id
-- and write "(j.status = 'running') IS TRUE", not "j.status = 'running'": the plain form
-- lets the planner scan every running job through jobs_status_id and match them against
-- the batch (it did, once statistics showed few running jobs: 1.8 ms for a finish of 15
-- with 200 running, growing with the number of running jobs), where the id lookup reads
-- one row per job.

-- name: lock_unique
-- Sent before enqueue (same transaction) when the batch has unique keys: row-lock every
-- key, making the rows of new ones, in key order so that producers never deadlock. The
-- enqueue statement after it starts with a new snapshot, taken once the locks are held:
-- it sees the job of every producer of these keys that came before.
INSERT INTO {s}.unique_keys AS u (key, mode)
SELECT DISTINCT k, 'active' FROM unnest(%(unique_keys)s::text[]) AS k
WHERE k IS NOT NULL
ORDER BY 1
ON CONFLICT (key) DO UPDATE SET mode = u.mode;

-- name: enqueue_plain
-- enqueue for a batch with no unique, limit or rate key: a plain insert, returning the ids
-- it added (an id that exists is skipped: the job was enqueued before).
INSERT INTO {s}.jobs (id, task, queue, priority, payload, status, max_attempts, created_at,
                      run_at, task_version, trace)
SELECT i.id, i.task, i.queue, i.priority, i.payload,
       CASE WHEN COALESCE(i.run_at, t.now) > t.now THEN 'scheduled' ELSE 'queued' END,
       i.max_attempts, t.now, COALESCE(i.run_at, t.now), i.task_version, i.trace::jsonb
FROM unnest(%(ids)s::text[], %(tasks)s::text[], %(queues)s::text[],
            %(priorities)s::integer[], %(payloads)s::bytea[], %(max_attempts)s::integer[],
            %(run_ats)s::float8[], %(versions)s::text[], %(traces)s::text[])
        WITH ORDINALITY
        AS i(id, task, queue, priority, payload, max_attempts, run_at, task_version, trace,
             pos),
     (SELECT {now} AS now) AS t
ORDER BY i.pos
ON CONFLICT DO NOTHING
RETURNING id;

-- name: enqueue
-- Insert every new job whose unique key is not held (held: by a job still waiting in
-- mode "queued", waiting or running in mode "active", or until ``until`` in mode
-- "window"); ON CONFLICT skips ids that exist. New jobs take their unique keys and make
-- the slots and buckets rows of their limit and rate keys (a new bucket starts full).
-- For each skipped job, name the job that holds its key.
-- Every look at unique_keys and jobs is a primary-key probe per input row (a LATERAL
-- subquery with LIMIT, which the planner neither flattens nor hashes): planned as joins,
-- the generic plan read the whole jobs table for the id check (one enqueue of a lock job:
-- 1.9 ms with 1,000 jobs in the table, 33 ms with 100,000), and correlated scans of the
-- inserted rows made a batch quadratic (1,000 jobs: 18 ms of 24).
WITH input AS (
    SELECT * FROM unnest(%(ids)s::text[], %(tasks)s::text[], %(queues)s::text[],
                         %(priorities)s::integer[], %(payloads)s::bytea[],
                         %(max_attempts)s::integer[], %(run_ats)s::float8[],
                         %(unique_keys)s::text[], %(versions)s::text[], %(traces)s::text[],
                         %(unique_modes)s::text[], %(unique_untils)s::float8[],
                         %(limit_keys)s::text[], %(limit_ns)s::integer[],
                         %(rate_keys)s::text[], %(rates)s::float8[], %(bursts)s::float8[])
        WITH ORDINALITY
        AS i(id, task, queue, priority, payload, max_attempts, run_at, unique_key,
             task_version, trace, unique_mode, unique_until, limit_key, limit_n, rate_key,
             rate_per_second, rate_burst, pos)
), t AS (
    SELECT {now} AS now
), held AS (
    SELECT i.pos, u.job_id
    FROM input AS i
    CROSS JOIN LATERAL (SELECT u.job_id, u.mode, u.until FROM {s}.unique_keys AS u
                        WHERE u.key = i.unique_key LIMIT 1) AS u
    LEFT JOIN LATERAL (SELECT h.status FROM {s}.jobs AS h
                       WHERE h.id = u.job_id LIMIT 1) AS h ON true
    CROSS JOIN t
    WHERE (u.mode = 'window' AND u.until > t.now)
       OR (u.mode = 'queued' AND h.status IN ('scheduled', 'queued'))
       OR (u.mode = 'active' AND h.status IN ('scheduled', 'queued', 'running'))
), inserted AS (
    INSERT INTO {s}.jobs (id, task, queue, priority, payload, status, max_attempts,
                          created_at, run_at, unique_key, task_version, trace, limit_key,
                          limit_n, rate_key, rate_per_second, rate_burst)
    SELECT i.id, i.task, i.queue, i.priority, i.payload,
           CASE WHEN COALESCE(i.run_at, t.now) > t.now THEN 'scheduled' ELSE 'queued' END,
           i.max_attempts, t.now, COALESCE(i.run_at, t.now), i.unique_key, i.task_version,
           i.trace::jsonb, i.limit_key, i.limit_n, i.rate_key, i.rate_per_second,
           i.rate_burst
    FROM input AS i, t
    WHERE NOT EXISTS (SELECT 1 FROM held WHERE held.pos = i.pos)
    ORDER BY i.pos
    ON CONFLICT DO NOTHING
    RETURNING id
), taken AS (
    INSERT INTO {s}.unique_keys AS u (key, job_id, mode, until)
    SELECT i.unique_key, i.id, i.unique_mode, i.unique_until
    FROM input AS i JOIN inserted AS n ON n.id = i.id
    WHERE i.unique_key IS NOT NULL
    ON CONFLICT (key) DO UPDATE
    SET job_id = excluded.job_id, mode = excluded.mode, until = excluded.until
), slots AS (
    INSERT INTO {s}.slots (key)
    SELECT DISTINCT i.limit_key FROM input AS i WHERE i.limit_key IS NOT NULL
    ORDER BY 1
    ON CONFLICT DO NOTHING
), buckets AS (
    INSERT INTO {s}.buckets (key, tokens, updated_at, full_at)
    SELECT i.rate_key, max(i.rate_burst), min(t.now), min(t.now) FROM input AS i, t
    WHERE i.rate_key IS NOT NULL
    GROUP BY i.rate_key
    ORDER BY 1
    ON CONFLICT DO NOTHING
)
SELECT i.id, n.id IS NOT NULL AS added, e.taken IS NOT NULL AS id_taken, h.job_id AS holder
FROM input AS i
LEFT JOIN inserted AS n ON n.id = i.id
LEFT JOIN held AS h ON h.pos = i.pos
-- (the table as it was before this statement: a row inserted above is not seen here)
LEFT JOIN LATERAL (SELECT true AS taken FROM {s}.jobs AS e
                   WHERE e.id = i.id AND n.id IS NULL LIMIT 1) AS e ON true
ORDER BY i.pos;

-- name: reserve
-- flow_mode (postgres_0011_lock_keys_in_reserve.sql) says which path runs; the others'
-- scans do not run (one-time filters).
-- 0, no flow control in force (no paused task, no ready job with a limit or rate key in
-- these queues, no parked job): one UPDATE. Queues in the order given, each scanned in
-- index order (priority, run_at, id) and locked with SKIP LOCKED; the nested loop runs the
-- next queue's scan only while the outer LIMIT still wants rows, so no row is locked that
-- is not taken.
-- 1, only lock keys and rate keys among the ready jobs: a row with a NULL id and the
-- status 'keys' tells the caller to send reserve_keys instead (it does so for these
-- queues until reserve_keys says 'plain').
-- 2, other flow control: reserve_flow, in this same statement.
WITH flow AS MATERIALIZED (
    SELECT {s}.flow_mode(%(queues)s::text[], {now}) AS mode
), plain AS (
    UPDATE {s}.jobs AS j
    SET status = 'running', attempts = j.attempts + 1, lease_token = %(token)s,
        lease_until = {now} + %(lease)s, started_at = {now}, worker = %(worker)s
    FROM (
        SELECT c.id
        FROM unnest(%(queues)s::text[]) WITH ORDINALITY AS q(name, pos)
        CROSS JOIN LATERAL (
            SELECT w.id FROM {s}.jobs AS w
            WHERE w.queue = q.name AND w.status IN ('scheduled', 'queued')
              AND w.park IS NULL AND (w.status = 'queued' OR w.run_at <= {now})
            ORDER BY w.priority DESC, w.run_at, w.id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) AS c
        WHERE NOT EXISTS (SELECT 1 FROM {s}.queues AS p WHERE p.name = q.name AND p.paused)
          AND (SELECT mode FROM flow) = 0
        LIMIT %(limit)s
    ) AS pick
    WHERE j.id = pick.id
    RETURNING j.id, j.task, j.queue, j.payload, j.status, j.priority, j.attempts,
        j.max_attempts, j.lost_leases, j.last_error, j.dead_reason, j.created_at,
        j.run_at, j.started_at, j.finished_at, j.worker, j.lease_until, j.lease_token,
        j.unique_key, j.task_version, j.result, j.trace, j.limit_key, j.rate_key
)
SELECT * FROM plain
UNION ALL
SELECT r.id, r.task, r.queue, r.payload, r.status, r.priority, r.attempts,
    r.max_attempts, r.lost_leases, r.last_error, r.dead_reason, r.created_at, r.run_at,
    r.started_at, r.finished_at, r.worker, r.lease_until, r.lease_token, r.unique_key,
    r.task_version, r.result, r.trace, r.limit_key, r.rate_key
FROM {s}.reserve_flow(%(queues)s::text[], %(limit)s::integer, %(worker)s::text,
                      %(lease)s::float8, %(token)s::text, {now}) AS r
WHERE (SELECT mode FROM flow) = 2
UNION ALL
SELECT NULL, NULL, NULL, NULL, 'keys', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
WHERE (SELECT mode FROM flow) = 1;

-- name: reserve_keys
-- reserve when the ready jobs of these queues carry no key but lock keys and rate keys
-- (flow_mode 1): the same scan as reserve's UPDATE, and of its jobs with keys those
-- admitted: a lock key's first job in the batch, with no running job of the key in this
-- snapshot and the key's advisory lock taken (tried, never waited for); a rate key's jobs
-- as far as its bucket, locked in key order, has tokens, which it takes (take_tokens).
-- The last row, with a NULL id, tells the caller what to do next: 'exact' when this
-- statement left a job out, or came back short while jobs of these queues are parked
-- behind a key (the exact path's sweep brings back those whose key freed unseen): send it
-- again with %(fast)s false, which runs reserve_flow for the rest of the batch; 'plain'
-- when flow_mode was not 1 (the jobs it took were taken as reserve would): send reserve
-- next time.
WITH flow AS MATERIALIZED (
    SELECT m, CASE WHEN m = 1 AND NOT %(fast)s THEN 2 ELSE m END AS mode
    FROM {s}.flow_mode(%(queues)s::text[], {now}) AS m
), cand AS MATERIALIZED (
    SELECT c.*, row_number() OVER () AS ord
    FROM (
        SELECT c.id, c.limit_key, c.limit_n, c.rate_key, c.rate_per_second, c.rate_burst
        FROM unnest(%(queues)s::text[]) WITH ORDINALITY AS q(name, pos)
        CROSS JOIN LATERAL (
            SELECT w.id, w.limit_key, w.limit_n, w.rate_key, w.rate_per_second, w.rate_burst
            FROM {s}.jobs AS w
            WHERE w.queue = q.name AND w.status IN ('scheduled', 'queued')
              AND w.park IS NULL AND (w.status = 'queued' OR w.run_at <= {now})
            ORDER BY w.priority DESC, w.run_at, w.id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) AS c
        WHERE NOT EXISTS (SELECT 1 FROM {s}.queues AS p WHERE p.name = q.name AND p.paused)
          AND (SELECT mode FROM flow) < 2
        LIMIT %(limit)s
    ) AS c
), tokens AS MATERIALIZED (
    -- the jobs of rate keys that their buckets pay for: take_tokens runs only when the
    -- batch has such jobs (its statements written in this one cost every reserve 0.1 ms,
    -- even on no row); cand is read in its order, which array_agg keeps
    SELECT t.id
    FROM (SELECT array_agg(c.id) AS ids FROM cand AS c
          WHERE c.rate_key IS NOT NULL AND c.limit_key IS NULL
          HAVING count(*) > 0) AS a
    CROSS JOIN LATERAL {s}.take_tokens(a.ids, {now}) AS t(id)
), pick AS MATERIALIZED (
    SELECT c.id FROM cand AS c
    WHERE c.rate_key IS NULL
      AND CASE WHEN c.limit_key IS NULL THEN true
               WHEN c.limit_n = 1 AND c.limit_key LIKE 'lock:%%'
                    AND NOT EXISTS (SELECT 1 FROM cand AS d
                                    WHERE d.limit_key = c.limit_key AND d.ord < c.ord)
                    -- (a probe per job: as NOT EXISTS, the planner hashed every entry of
                    -- jobs_lock_running, 1.5 ms with 9,600 lock jobs running)
                    AND (SELECT r.id FROM {s}.jobs AS r
                         WHERE r.limit_key = c.limit_key AND r.status = 'running'
                           AND r.limit_n = 1
                         LIMIT 1) IS NULL
               THEN pg_try_advisory_xact_lock(
                   hashtextextended(%(schema)s || '/' || c.limit_key, 0))
               ELSE false END
    UNION ALL
    SELECT t.id FROM tokens AS t
), fast AS (
    UPDATE {s}.jobs AS j
    SET status = 'running', attempts = j.attempts + 1, lease_token = %(token)s,
        lease_until = {now} + %(lease)s, started_at = {now}, worker = %(worker)s
    FROM pick
    WHERE j.id = pick.id
    RETURNING j.id, j.task, j.queue, j.payload, j.status, j.priority, j.attempts,
        j.max_attempts, j.lost_leases, j.last_error, j.dead_reason, j.created_at,
        j.run_at, j.started_at, j.finished_at, j.worker, j.lease_until, j.lease_token,
        j.unique_key, j.task_version, j.result, j.trace, j.limit_key, j.rate_key
)
SELECT * FROM fast
UNION ALL
SELECT r.id, r.task, r.queue, r.payload, r.status, r.priority, r.attempts,
    r.max_attempts, r.lost_leases, r.last_error, r.dead_reason, r.created_at, r.run_at,
    r.started_at, r.finished_at, r.worker, r.lease_until, r.lease_token, r.unique_key,
    r.task_version, r.result, r.trace, r.limit_key, r.rate_key
FROM {s}.reserve_flow(%(queues)s::text[], %(limit)s::integer, %(worker)s::text,
                      %(lease)s::float8, %(token)s::text, {now}) AS r
WHERE (SELECT mode FROM flow) = 2
UNION ALL
SELECT NULL, NULL, NULL, NULL, CASE WHEN (SELECT m FROM flow) <> 1 THEN 'plain' ELSE 'exact' END,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL
WHERE (SELECT m FROM flow) <> 1
   OR (SELECT count(*) FROM pick) < (SELECT count(*) FROM cand)
   OR CASE WHEN (SELECT mode FROM flow) = 1 AND (SELECT count(*) FROM pick) < %(limit)s
           THEN EXISTS (SELECT 1 FROM {s}.jobs AS p
                        WHERE p.queue = ANY(%(queues)s::text[])
                          AND p.status IN ('scheduled', 'queued') AND p.park IS NOT NULL)
           ELSE false END;

-- name: extend
UPDATE {s}.jobs AS j SET lease_until = {now} + %(lease)s
FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS l(id, token)
WHERE j.id = l.id AND j.lease_token = l.token AND (j.status = 'running') IS TRUE
RETURNING j.id;

-- name: finish
UPDATE {s}.jobs AS j
SET status = o.status,
    finished_at = CASE WHEN o.status = 'scheduled' THEN j.finished_at ELSE {now} END,
    run_at = CASE WHEN o.status = 'scheduled' THEN COALESCE(o.retry_at, {now})
                  ELSE j.run_at END,
    worker = CASE WHEN o.status = 'scheduled' THEN NULL ELSE j.worker END,
    result = CASE WHEN o.status = 'succeeded' THEN o.result ELSE j.result END,
    dead_reason = CASE WHEN o.status = 'dead' THEN o.dead_reason ELSE j.dead_reason END,
    last_error = CASE WHEN o.status = 'succeeded' THEN COALESCE(o.error, j.last_error)
                      ELSE o.error END,
    lease_until = NULL
FROM (SELECT e->>0 AS id, e->>1 AS token, e->>2 AS status, (e->>3)::float8 AS retry_at,
             e->>4 AS dead_reason, e->>5 AS error, e->>6 AS result
      FROM json_array_elements(%(outcomes)s::json) AS e
      LIMIT %(n)s) AS o  -- the batch's size: the planner's guess for a function is 100 rows,
                         -- enough to prefer reading the whole table to the id lookups
WHERE j.id = o.id AND j.lease_token = o.token AND (j.status = 'running') IS TRUE
RETURNING j.id;

-- name: release
UPDATE {s}.jobs AS j
SET status = CASE WHEN %(delay)s::float8 > 0 THEN 'scheduled' ELSE 'queued' END,
    run_at = {now} + %(delay)s::float8, attempts = greatest(j.attempts - 1, 0),
    lease_until = NULL, lease_token = NULL, worker = NULL
FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS l(id, token)
WHERE j.id = l.id AND j.lease_token = l.token AND (j.status = 'running') IS TRUE
RETURNING j.id;

-- name: recover_expired
-- SKIP LOCKED: a job whose row is locked is being finished or extended right now.
UPDATE {s}.jobs AS j
SET status = CASE WHEN j.lost_leases + 1 >= %(limit)s THEN 'dead' ELSE 'queued' END,
    dead_reason = CASE WHEN j.lost_leases + 1 >= %(limit)s THEN 'worker_lost'
                       ELSE j.dead_reason END,
    finished_at = CASE WHEN j.lost_leases + 1 >= %(limit)s THEN {now}
                       ELSE j.finished_at END,
    last_error = %(error)s, lost_leases = j.lost_leases + 1, run_at = {now},
    lease_until = NULL, lease_token = NULL, worker = NULL
WHERE j.id IN (SELECT e.id FROM {s}.jobs AS e
               WHERE e.status = 'running' AND e.lease_until < {now}
               FOR UPDATE SKIP LOCKED)
  AND j.status = 'running'
RETURNING j.id;

-- name: recover_given
UPDATE {s}.jobs AS j
SET status = CASE WHEN j.lost_leases + 1 >= %(limit)s THEN 'dead' ELSE 'queued' END,
    dead_reason = CASE WHEN j.lost_leases + 1 >= %(limit)s THEN 'worker_lost'
                       ELSE j.dead_reason END,
    finished_at = CASE WHEN j.lost_leases + 1 >= %(limit)s THEN {now}
                       ELSE j.finished_at END,
    last_error = %(error)s, lost_leases = j.lost_leases + 1, run_at = {now},
    lease_until = NULL, lease_token = NULL, worker = NULL
FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS l(id, token)
WHERE j.id = l.id AND j.lease_token = l.token AND (j.status = 'running') IS TRUE
RETURNING j.id;

-- name: unpark
-- Parked jobs of limit keys with free slots, and of tasks no longer paused, come back (see
-- postgres_0005_parked_jobs.sql).
SELECT {s}.unpark_free_keys(%(keys)s, ''), {s}.unpark_resumed_tasks(%(keys)s);

-- name: next_due
-- Seconds until the earliest scheduled job of these queues is due, or the earliest job
-- parked for its token (NULL: none).
-- Queue by queue, each the first entry of an index (jobs_live, jobs_rate_due).
SELECT min(least(s.run_at, r.park_due)) - {now}
FROM unnest(%(queues)s::text[]) AS q(name)
LEFT JOIN LATERAL (SELECT j.run_at FROM {s}.jobs AS j
                   WHERE j.queue = q.name AND j.status = 'scheduled'
                   ORDER BY j.run_at LIMIT 1) AS s ON true
LEFT JOIN LATERAL (SELECT j.park_due FROM {s}.jobs AS j
                   WHERE j.queue = q.name AND j.park = 'r'
                     AND j.status IN ('scheduled', 'queued')
                   ORDER BY j.park_due LIMIT 1) AS r ON true;

-- name: requeue
UPDATE {s}.jobs
SET status = 'queued', run_at = {now}, attempts = 0, lost_leases = 0, dead_reason = NULL,
    finished_at = NULL, lease_token = NULL, park = NULL, park_due = NULL
WHERE id = ANY(%(ids)s::text[]) AND status IN ('dead', 'scheduled', 'cancelled');

-- name: requeue_dead
UPDATE {s}.jobs
SET status = 'queued', run_at = {now}, attempts = 0, lost_leases = 0, dead_reason = NULL,
    finished_at = NULL, lease_token = NULL, park = NULL, park_due = NULL
WHERE status = 'dead' AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text);

-- name: cancel
UPDATE {s}.jobs SET status = 'cancelled', finished_at = {now}
WHERE id = ANY(%(ids)s::text[]) AND status IN ('scheduled', 'queued');

-- name: purge
UPDATE {s}.jobs SET status = 'cancelled', finished_at = {now}
WHERE queue = %(queue)s AND status IN ('scheduled', 'queued');

-- name: set_paused
-- Resuming a queue wakes its idle workers.
WITH q AS (
    INSERT INTO {s}.queues AS q (name, paused) VALUES (%(queue)s, %(paused)s)
    ON CONFLICT (name) DO UPDATE SET paused = excluded.paused
    RETURNING q.name, q.paused
)
SELECT pg_notify(%(channel)s, q.name)::text FROM q WHERE NOT q.paused;

-- name: prune_succeeded
DELETE FROM {s}.jobs WHERE id IN (
    SELECT id FROM {s}.jobs
    WHERE status = 'succeeded' AND finished_at < %(before)s
    LIMIT %(batch)s FOR UPDATE SKIP LOCKED);

-- name: prune_failed
DELETE FROM {s}.jobs WHERE id IN (
    SELECT id FROM {s}.jobs
    WHERE status IN ('dead', 'cancelled') AND finished_at < %(before)s
    LIMIT %(batch)s FOR UPDATE SKIP LOCKED);

-- name: prune_keys
-- Flow-control rows nothing needs any more, at most %(batch)s of each kind: unique keys no
-- job holds (the mode's rule, as in enqueue), slots of limit keys with no waiting job,
-- and buckets full again (a missing row is a full bucket). SKIP LOCKED: a row locked is
-- in use; a unique key taken again since this snapshot (another job_id) is kept.
WITH u AS (
    DELETE FROM {s}.unique_keys AS u
    USING (SELECT k.key, k.job_id FROM {s}.unique_keys AS k
           LEFT JOIN {s}.jobs AS h ON h.id = k.job_id
           WHERE NOT COALESCE((k.mode = 'window' AND k.until > {now})
                   OR (k.mode = 'queued' AND h.status IN ('scheduled', 'queued'))
                   OR (k.mode = 'active' AND h.status IN ('scheduled', 'queued', 'running')),
                   false)
           LIMIT %(batch)s
           FOR UPDATE OF k SKIP LOCKED) AS c
    WHERE u.key = c.key AND u.job_id IS NOT DISTINCT FROM c.job_id
    RETURNING 1
), sl AS (
    DELETE FROM {s}.slots WHERE key IN (
        SELECT k.key FROM {s}.slots AS k
        WHERE NOT EXISTS (SELECT 1 FROM {s}.jobs AS w WHERE w.limit_key = k.key
                          AND w.status IN ('scheduled', 'queued') AND w.park IS NULL)
          AND NOT EXISTS (SELECT 1 FROM {s}.jobs AS p WHERE p.limit_key = k.key
                          AND p.status IN ('scheduled', 'queued') AND p.park = 'l')
        LIMIT %(batch)s
        FOR UPDATE SKIP LOCKED)
    RETURNING 1
), b AS (
    DELETE FROM {s}.buckets WHERE key IN (
        SELECT k.key FROM {s}.buckets AS k WHERE k.full_at <= {now}
        LIMIT %(batch)s
        FOR UPDATE SKIP LOCKED)
    RETURNING 1
)
SELECT (SELECT count(*) FROM u) + (SELECT count(*) FROM sl) + (SELECT count(*) FROM b);

-- name: get
SELECT id, task, queue, payload, status, priority, attempts, max_attempts, lost_leases,
    last_error, dead_reason, created_at, run_at, started_at, finished_at, worker,
    lease_until, lease_token, unique_key, task_version, result, trace, limit_key, rate_key
FROM {s}.jobs WHERE id = %(id)s;

-- name: list_jobs
-- {where} is built from fixed fragments for the filters given, so each combination gets
-- its own plan (by status: jobs_status_id; otherwise the primary key, newest first).
SELECT id, task, queue, payload, status, priority, attempts, max_attempts, lost_leases,
    last_error, dead_reason, created_at, run_at, started_at, finished_at, worker,
    lease_until, lease_token, unique_key, task_version, result, trace, limit_key, rate_key
FROM {s}.jobs
WHERE {where}
ORDER BY id DESC LIMIT %(limit)s;

-- name: queue_stats
-- Live jobs from the partial index jobs_live, read once for both their counts and the
-- oldest ready job per queue; finished ones from terminal_counts.
WITH live AS MATERIALIZED (
    SELECT queue, status, count(*) AS n,
           min(run_at) FILTER (WHERE status = 'queued' OR run_at <= {now}) AS oldest
    FROM {s}.jobs WHERE status IN ('scheduled', 'queued', 'running')
    GROUP BY queue, status
)
SELECT 'count' AS kind, queue, status, n::float8 AS value FROM live
UNION ALL
SELECT 'count', queue, status, sum(n)::float8
FROM {s}.terminal_counts GROUP BY queue, status HAVING sum(n) <> 0
UNION ALL
SELECT 'age', queue, NULL, greatest(0, {now} - min(oldest))
FROM live WHERE status <> 'running' AND oldest IS NOT NULL
GROUP BY queue
UNION ALL
SELECT 'paused', name, NULL, paused::integer::float8 FROM {s}.queues;

-- name: upsert_worker
INSERT INTO {s}.workers AS w (id, info, seen_at)
VALUES (%(id)s, %(info)s::jsonb || jsonb_build_object('seen_at', {now}), {now})
ON CONFLICT (id) DO UPDATE SET info = excluded.info, seen_at = excluded.seen_at;

-- name: delete_worker
DELETE FROM {s}.workers WHERE id = %(id)s;

-- name: live_workers
SELECT info FROM {s}.workers WHERE seen_at >= {now} - %(within)s ORDER BY id;

-- name: acquire_lease
INSERT INTO {s}.leases AS l (name, owner, until)
VALUES (%(name)s, %(owner)s, {now} + %(ttl)s)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until
WHERE l.owner = excluded.owner OR l.until < {now}
RETURNING 1;

-- name: release_lease
DELETE FROM {s}.leases WHERE name = %(name)s AND owner = %(owner)s;

-- name: pause_task
INSERT INTO {s}.paused_tasks (task) VALUES (%(task)s) ON CONFLICT DO NOTHING;

-- name: resume_task
-- Resuming a task type brings back its parked jobs and wakes every idle worker (an empty
-- payload means every queue).
WITH gone AS (DELETE FROM {s}.paused_tasks WHERE task = %(task)s RETURNING task),
back AS (UPDATE {s}.jobs SET park = NULL
         WHERE task = %(task)s AND park = 't' AND status IN ('scheduled', 'queued'))
SELECT pg_notify(%(channel)s, '')::text FROM gone;

-- name: paused_tasks
SELECT task FROM {s}.paused_tasks ORDER BY task;

-- name: schedule_marks
SELECT name, fire_at FROM {s}.schedule_marks;

-- name: mark_schedule
INSERT INTO {s}.schedule_marks AS m (name, fire_at) VALUES (%(name)s, %(fire_at)s)
ON CONFLICT (name) DO UPDATE SET fire_at = greatest(m.fire_at, excluded.fire_at);
