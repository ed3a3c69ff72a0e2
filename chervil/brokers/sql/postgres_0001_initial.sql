-- chervil PostgreSQL schema, version 1. Runs with search_path set to the broker's own
-- schema (chervil by default), inside one transaction under an advisory lock.
--
-- jobs             one row per job: the single source of truth (DESIGN §2)
-- queues           paused flag per queue
-- workers          worker heartbeats
-- leases           named leases (scheduler leadership, locks)
-- terminal_counts  jobs per (queue, terminal status), kept by a trigger, so queue stats
--                  never scan finished rows; sharded by backend pid so that concurrent
--                  finishes do not queue up behind one hot counter row
--
-- Times are double precision seconds since the epoch (the Job record's floats).

CREATE TABLE jobs (
    id            text PRIMARY KEY,
    task          text NOT NULL,
    queue         text NOT NULL,
    priority      integer NOT NULL DEFAULT 0,
    payload       bytea NOT NULL,
    status        text NOT NULL CHECK (status IN ('scheduled', 'queued', 'running',
                                                  'succeeded', 'dead', 'cancelled')),
    attempts      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT 1,
    lost_leases   integer NOT NULL DEFAULT 0,
    last_error    text,
    dead_reason   text,
    created_at    double precision NOT NULL,
    run_at        double precision NOT NULL,
    started_at    double precision,
    finished_at   double precision,
    worker        text,
    lease_until   double precision,
    lease_token   text,
    unique_key    text,
    task_version  text,
    result        text,
    trace         jsonb
);

-- reserve: waiting jobs of one queue in priority order (due scheduled ones are taken
-- directly, without a separate promotion step)
CREATE INDEX jobs_waiting ON jobs (queue, priority DESC, run_at, id)
    WHERE status IN ('scheduled', 'queued');
-- queue stats: counts of live jobs per queue and status, and the oldest ready job
CREATE INDEX jobs_live ON jobs (queue, status, run_at)
    WHERE status IN ('scheduled', 'queued', 'running');
-- the next wake-up time of an idle worker
CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE status = 'scheduled';
-- recovery of expired leases
CREATE INDEX jobs_running ON jobs (lease_until) WHERE status = 'running';
-- one waiting-or-running job per unique key
CREATE UNIQUE INDEX jobs_unique ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running');
-- listing by status, newest first (the dashboard's dead letters, failed jobs, ...)
CREATE INDEX jobs_status_id ON jobs (status, id);
-- retention (prune)
CREATE INDEX jobs_finished ON jobs (status, finished_at)
    WHERE status IN ('succeeded', 'dead', 'cancelled');

CREATE TABLE queues (
    name    text PRIMARY KEY,
    paused  boolean NOT NULL DEFAULT false
);

CREATE TABLE workers (
    id       text PRIMARY KEY,
    info     jsonb NOT NULL,
    seen_at  double precision NOT NULL
);

CREATE TABLE leases (
    name   text PRIMARY KEY,
    owner  text NOT NULL,
    until  double precision NOT NULL
);

CREATE TABLE terminal_counts (
    queue   text NOT NULL,
    status  text NOT NULL,
    shard   integer NOT NULL,
    n       bigint NOT NULL,
    PRIMARY KEY (queue, status, shard)
);

-- One statement-level trigger per kind of change, over the changed rows:
--  * wakes idle workers: NOTIFY chervil_<schema>, payload the queue, for every queue
--    that gained a waiting job (sent at commit, so never before the job is visible,
--    and never on rollback: also for enqueues inside a caller's own transaction);
--  * keeps terminal_counts exact, in the same transaction as the change.
CREATE FUNCTION jobs_changed() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('chervil_' || TG_TABLE_SCHEMA, q.queue)
        FROM (SELECT DISTINCT queue FROM new_rows
              WHERE status IN ('scheduled', 'queued')) AS q;
        INSERT INTO terminal_counts AS c (queue, status, shard, n)
        SELECT queue, status, pg_backend_pid() % 16, count(*) FROM new_rows
        WHERE status IN ('succeeded', 'dead', 'cancelled') GROUP BY queue, status
        ON CONFLICT (queue, status, shard) DO UPDATE SET n = c.n + excluded.n;
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM pg_notify('chervil_' || TG_TABLE_SCHEMA, q.queue)
        FROM (SELECT DISTINCT queue FROM new_rows
              WHERE status IN ('scheduled', 'queued')) AS q;
        INSERT INTO terminal_counts AS c (queue, status, shard, n)
        SELECT queue, status, pg_backend_pid() % 16, sum(d) FROM (
            SELECT queue, status, 1 AS d FROM new_rows
            WHERE status IN ('succeeded', 'dead', 'cancelled')
            UNION ALL
            SELECT queue, status, -1 AS d FROM old_rows
            WHERE status IN ('succeeded', 'dead', 'cancelled')
        ) AS delta
        GROUP BY queue, status HAVING sum(d) <> 0
        ON CONFLICT (queue, status, shard) DO UPDATE SET n = c.n + excluded.n;
    ELSE
        INSERT INTO terminal_counts AS c (queue, status, shard, n)
        SELECT queue, status, pg_backend_pid() % 16, -count(*) FROM old_rows
        WHERE status IN ('succeeded', 'dead', 'cancelled') GROUP BY queue, status
        ON CONFLICT (queue, status, shard) DO UPDATE SET n = c.n + excluded.n;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_changed();
CREATE TRIGGER jobs_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_changed();
CREATE TRIGGER jobs_deleted AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_changed();
