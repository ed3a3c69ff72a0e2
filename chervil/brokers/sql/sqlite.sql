-- Statements of the SQLite broker (chervil/brokers/sqlite.py). Every write runs inside
-- BEGIN IMMEDIATE ... COMMIT, so each verb is one atomic transaction.
-- Tables: chervil_jobs, chervil_queues, chervil_workers, chervil_leases, chervil_unique,
-- chervil_buckets, chervil_paused_tasks, chervil_schedule_marks.

-- name: insert_job
INSERT OR IGNORE INTO chervil_jobs
    (id, task, queue, priority, payload, status, max_attempts, created_at, run_at,
     unique_key, task_version, trace, limit_key, limit_n, rate_key, rate_per_second,
     rate_burst)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: unique_holder
-- The job holding a unique key, if it still holds it at ?2 (now).
SELECT u.job_id FROM chervil_unique u LEFT JOIN chervil_jobs j ON j.id = u.job_id
WHERE u.key = ?1 AND (
    (u.mode = 'window' AND u.until > ?2)
 OR (u.mode = 'queued' AND j.status IN ('scheduled', 'queued'))
 OR (u.mode = 'active' AND j.status IN ('scheduled', 'queued', 'running')));

-- name: take_unique
INSERT INTO chervil_unique (key, job_id, mode, until) VALUES (?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET job_id = excluded.job_id, mode = excluded.mode,
    until = excluded.until;

-- name: promote_due
UPDATE chervil_jobs SET status = 'queued'
WHERE status = 'scheduled' AND run_at <= ?;

-- name: paused_queues
SELECT name FROM chervil_queues WHERE paused = 1;

-- name: flow_control_active
-- Whether any flow control is in force (if not, reserve takes its one-statement path).
SELECT EXISTS (SELECT 1 FROM chervil_paused_tasks)
    OR EXISTS (SELECT 1 FROM chervil_jobs INDEXED BY chervil_jobs_flow
               WHERE status = 'queued' AND queue = ? AND park IS NULL
               AND (limit_key IS NOT NULL OR rate_key IS NOT NULL));

-- name: reserve
UPDATE chervil_jobs
SET status = 'running', attempts = attempts + 1, lease_token = ?, lease_until = ?,
    started_at = ?, worker = ?
WHERE id IN (SELECT id FROM chervil_jobs WHERE status = 'queued' AND queue = ?
             AND park IS NULL ORDER BY priority DESC, run_at, id LIMIT ?)
RETURNING id, task, queue, payload, status, priority, attempts, max_attempts, lost_leases,
    last_error, dead_reason, created_at, run_at, started_at, finished_at, worker,
    lease_until, lease_token, unique_key, task_version, result, trace, limit_key, rate_key;

-- name: reserve_candidates
-- Ready jobs of one queue, in order. Jobs of a full limit key, of a paused task or of an
-- empty bucket are among them: the broker parks them (see sqlite_0004_parked_jobs.sql,
-- sqlite_0005 and sqlite_0006), then checks limits and tokens inside the batch itself.
SELECT rowid, task, limit_key, limit_n, rate_key, rate_per_second, rate_burst
FROM chervil_jobs WHERE status = 'queued' AND queue = ?1 AND park IS NULL
ORDER BY priority DESC, run_at, id LIMIT ?2;

-- name: reserve_ids
-- "(?)" is widened to one placeholder per job by the broker; the jobs are given by rowid
-- (as reserve_candidates read them: one b-tree search each, where an id needs two).
UPDATE chervil_jobs
SET status = 'running', attempts = attempts + 1, lease_token = ?, lease_until = ?,
    started_at = ?, worker = ?
WHERE +status = 'queued' AND rowid IN (?)
RETURNING id, task, queue, payload, status, priority, attempts, max_attempts, lost_leases,
    last_error, dead_reason, created_at, run_at, started_at, finished_at, worker,
    lease_until, lease_token, unique_key, task_version, result, trace, limit_key, rate_key;

-- name: running_for_key
SELECT COUNT(*) FROM chervil_jobs INDEXED BY chervil_jobs_limits
WHERE status = 'running' AND limit_key IS NOT NULL AND limit_key = ?;

-- name: park_key
-- Park up to ?3 ready jobs of limit key ?1 that its ?2 running jobs leave no slot for,
-- from the head.
UPDATE chervil_jobs SET park = 'l'
WHERE id IN (SELECT id FROM chervil_jobs INDEXED BY chervil_jobs_key_waiting
             WHERE status = 'queued' AND limit_key = ?1 AND park IS NULL AND limit_n <= ?2
             ORDER BY priority DESC, run_at, id LIMIT ?3);

-- name: park_task
-- Park up to ?3 ready jobs of paused task ?2 in queue ?1, from the head.
UPDATE chervil_jobs SET park = 't'
WHERE id IN (SELECT id FROM chervil_jobs
             WHERE status = 'queued' AND queue = ?1 AND park IS NULL AND task = ?2
             ORDER BY priority DESC, run_at, id LIMIT ?3);

-- name: unpark_task
UPDATE chervil_jobs SET park = NULL WHERE task = ? AND status = 'queued' AND park = 't';

-- name: park_rate
-- Park up to ?5 ready jobs of rate key ?1 from the head, but the jobs whose rowids are in
-- the JSON array ?6: the n-th one due when the bucket, holding ?3 tokens at ?2 and
-- refilling ?4 a second, will hold n tokens, and not before n / ?4 after the key's last
-- parked job (jobs with a token now are left ready).
UPDATE chervil_jobs SET park = 'r', park_due = p.due
FROM (SELECT h.id,
             max(?2 + (h.n - ?3) / ?4,
                 COALESCE((SELECT max(d.park_due) FROM chervil_jobs AS d
                           INDEXED BY chervil_jobs_rate_parked
                           WHERE d.status = 'queued' AND d.park = 'r' AND d.rate_key = ?1)
                          + h.n / ?4, ?2 + (h.n - ?3) / ?4)) AS due
      FROM (SELECT w.id, row_number() OVER (ORDER BY w.priority DESC, w.run_at, w.id) AS n
            FROM (SELECT id, priority, run_at FROM chervil_jobs
                  INDEXED BY chervil_jobs_rate_waiting
                  WHERE status = 'queued' AND rate_key = ?1 AND park IS NULL
                    AND rowid NOT IN (SELECT value FROM json_each(?6))
                  ORDER BY priority DESC, run_at, id LIMIT ?5) AS w) AS h) AS p
WHERE chervil_jobs.id = p.id AND p.due > ?2;

-- name: unpark_rate_due
-- The parked jobs whose token is due come back.
UPDATE chervil_jobs SET park = NULL, park_due = NULL
WHERE id IN (SELECT id FROM chervil_jobs INDEXED BY chervil_jobs_rate_due
             WHERE status = 'queued' AND park = 'r' AND park_due <= ?);

-- name: bucket
SELECT tokens, updated_at FROM chervil_buckets WHERE key = ?;

-- name: save_bucket
INSERT INTO chervil_buckets (key, tokens, updated_at, rate, burst) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at,
    rate = excluded.rate, burst = excluded.burst;

-- name: pause_task
INSERT OR IGNORE INTO chervil_paused_tasks (task) VALUES (?);

-- name: resume_task
DELETE FROM chervil_paused_tasks WHERE task = ?;

-- name: paused_tasks
SELECT task FROM chervil_paused_tasks ORDER BY task;

-- name: schedule_marks
SELECT name, fire_at FROM chervil_schedule_marks;

-- name: mark_schedule
INSERT INTO chervil_schedule_marks (name, fire_at) VALUES (?1, ?2)
ON CONFLICT (name) DO UPDATE SET fire_at = MAX(fire_at, excluded.fire_at);

-- name: extend
UPDATE chervil_jobs SET lease_until = ?
WHERE id = ? AND lease_token = ? AND status = 'running';

-- name: finish_succeeded
UPDATE chervil_jobs
SET status = 'succeeded', finished_at = ?, lease_until = NULL, result = ?,
    last_error = COALESCE(?, last_error)
WHERE id = ? AND lease_token = ? AND status = 'running';

-- name: finish_succeeded_many
-- "(?)" is widened to one placeholder per id by the broker; the unary "+" keeps the
-- planner on the primary key (the status indexes would scan every running job).
UPDATE chervil_jobs SET status = 'succeeded', finished_at = ?, lease_until = NULL
WHERE +lease_token = ? AND +status = 'running' AND id IN (?)
RETURNING id;

-- name: finish_retry
UPDATE chervil_jobs
SET status = 'scheduled', run_at = ?, lease_until = NULL, last_error = ?, worker = NULL
WHERE id = ? AND lease_token = ? AND status = 'running';

-- name: finish_dead
UPDATE chervil_jobs
SET status = 'dead', finished_at = ?, lease_until = NULL, dead_reason = ?, last_error = ?
WHERE id = ? AND lease_token = ? AND status = 'running';

-- name: release
UPDATE chervil_jobs
SET status = CASE WHEN ? > 0 THEN 'scheduled' ELSE 'queued' END, run_at = ?,
    attempts = MAX(attempts - 1, 0), lease_until = NULL, lease_token = NULL, worker = NULL
WHERE id = ? AND lease_token = ? AND status = 'running';

-- name: expired_leases
SELECT id, lease_token FROM chervil_jobs WHERE status = 'running' AND lease_until < ?;

-- name: recover_one
UPDATE chervil_jobs
SET status = CASE WHEN lost_leases + 1 >= ? THEN 'dead' ELSE 'queued' END,
    dead_reason = CASE WHEN lost_leases + 1 >= ? THEN 'worker_lost' ELSE dead_reason END,
    finished_at = CASE WHEN lost_leases + 1 >= ? THEN ? ELSE finished_at END,
    last_error = ?,
    lost_leases = lost_leases + 1, run_at = ?, lease_until = NULL, lease_token = NULL,
    worker = NULL
WHERE id = ? AND lease_token = ? AND status = 'running';

-- name: requeue
UPDATE chervil_jobs
SET status = 'queued', run_at = ?, attempts = 0, lost_leases = 0, dead_reason = NULL,
    finished_at = NULL, lease_token = NULL, park = NULL, park_due = NULL
WHERE id = ? AND status IN ('dead', 'scheduled', 'cancelled');

-- name: requeue_dead
UPDATE chervil_jobs
SET status = 'queued', run_at = ?, attempts = 0, lost_leases = 0, dead_reason = NULL,
    finished_at = NULL, lease_token = NULL, park = NULL, park_due = NULL
WHERE status = 'dead' AND (? IS NULL OR queue = ?) AND (? IS NULL OR task = ?);

-- name: cancel
UPDATE chervil_jobs SET status = 'cancelled', finished_at = ?
WHERE id = ? AND status IN ('scheduled', 'queued');

-- name: purge
UPDATE chervil_jobs SET status = 'cancelled', finished_at = ?
WHERE queue = ? AND status IN ('scheduled', 'queued');

-- name: set_paused
INSERT INTO chervil_queues (name, paused) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused;

-- name: prune
DELETE FROM chervil_jobs WHERE id IN (
    SELECT id FROM chervil_jobs
    WHERE (status = 'succeeded' AND finished_at < ?)
       OR (status IN ('dead', 'cancelled') AND finished_at < ?)
    LIMIT ?);

-- name: prune_unique
-- Unique keys no job holds at ?1 any more (the rule of unique_holder), at most ?2.
DELETE FROM chervil_unique WHERE key IN (
    SELECT u.key FROM chervil_unique AS u LEFT JOIN chervil_jobs AS j ON j.id = u.job_id
    WHERE NOT COALESCE((u.mode = 'window' AND u.until > ?1)
                       OR (u.mode = 'queued' AND j.status IN ('scheduled', 'queued'))
                       OR (u.mode = 'active' AND j.status IN ('scheduled', 'queued', 'running')),
                       0)
    LIMIT ?2);

-- name: prune_buckets
-- Token buckets full again at ?1 (a missing bucket is a full one), at most ?2.
DELETE FROM chervil_buckets WHERE key IN (
    SELECT key FROM chervil_buckets WHERE tokens + (?1 - updated_at) * rate >= burst LIMIT ?2);

-- name: get
SELECT id, task, queue, payload, status, priority, attempts, max_attempts, lost_leases,
    last_error, dead_reason, created_at, run_at, started_at, finished_at, worker,
    lease_until, lease_token, unique_key, task_version, result, trace, limit_key, rate_key
FROM chervil_jobs WHERE id = ?;

-- name: list_jobs
SELECT id, task, queue, payload, status, priority, attempts, max_attempts, lost_leases,
    last_error, dead_reason, created_at, run_at, started_at, finished_at, worker,
    lease_until, lease_token, unique_key, task_version, result, trace, limit_key, rate_key
FROM chervil_jobs
WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR queue = ?2) AND (?3 IS NULL OR task = ?3)
  AND (?4 IS NULL OR id < ?4)
ORDER BY id DESC LIMIT ?5;

-- name: count_by_status
SELECT queue, status, COUNT(*) FROM chervil_jobs GROUP BY queue, status;

-- name: oldest_ready
SELECT queue, MIN(run_at) FROM chervil_jobs WHERE status = 'queued' GROUP BY queue;

-- name: next_due
-- The earliest due time of a scheduled job, or of a job parked for its token.
SELECT MIN(t) FROM (SELECT MIN(run_at) AS t FROM chervil_jobs
                    INDEXED BY chervil_jobs_scheduled WHERE status = 'scheduled'
                    UNION ALL
                    SELECT MIN(park_due) FROM chervil_jobs INDEXED BY chervil_jobs_rate_due
                    WHERE status = 'queued' AND park = 'r');

-- name: all_queues
SELECT name, paused FROM chervil_queues;

-- name: upsert_worker
INSERT INTO chervil_workers (id, info, seen_at) VALUES (?, ?, ?)
ON CONFLICT (id) DO UPDATE SET info = excluded.info, seen_at = excluded.seen_at;

-- name: delete_worker
DELETE FROM chervil_workers WHERE id = ?;

-- name: live_workers
SELECT info, seen_at FROM chervil_workers WHERE seen_at >= ?;

-- name: forget_workers
DELETE FROM chervil_workers WHERE seen_at < ?;

-- name: acquire_lease
INSERT INTO chervil_leases (name, owner, until) VALUES (?1, ?2, ?3)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until
WHERE chervil_leases.owner = excluded.owner OR chervil_leases.until < ?4;

-- name: release_lease
DELETE FROM chervil_leases WHERE name = ? AND owner = ?;
