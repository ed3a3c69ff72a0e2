-- chervil PostgreSQL schema, version 2: flow control and scheduling.
--
-- jobs gains the keys that reserve enforces:
--   limit_key / limit_n                       at most limit_n running jobs per key
--                                             (locks are limit_n = 1)
--   rate_key / rate_per_second / rate_burst   a token bucket per key
-- unique_keys     one row per unique key: the job that took it, in which mode, until when.
--                 Whether it still holds it is decided when asked (from the job's status,
--                 or ``until`` in window mode). Enqueue row-locks the keys of its batch
--                 (an upsert in key order) before it looks, so two producers of one key
--                 are serialized and the second one sees the first one's job.
-- slots           one row per limit key: the row reserve locks (FOR UPDATE, in key order)
--                 while it counts the key's running jobs (from jobs itself, so every way of
--                 leaving "running" frees the slot) and admits new ones
-- buckets         one row per rate key: its token bucket, locked the same way
-- paused_tasks    task types whose waiting jobs reserve skips
-- schedule_marks  the last fire time per cron schedule
--
-- The partial index jobs_unique (one waiting-or-running job per key) goes: it can say
-- neither "only while queued" nor "for a window after it finished".

-- (All NULL on jobs without flow control, so their rows grow by no byte: the hot rows of
-- a plain queue stay as narrow as they were.)
ALTER TABLE jobs
    ADD COLUMN limit_key text,
    ADD COLUMN limit_n integer,
    ADD COLUMN rate_key text,
    ADD COLUMN rate_per_second double precision,
    ADD COLUMN rate_burst double precision;

CREATE TABLE unique_keys (
    key     text PRIMARY KEY,
    job_id  text,                   -- NULL: seen by an enqueue that did not take it
    mode    text NOT NULL CHECK (mode IN ('queued', 'active', 'window')),
    until   double precision        -- window mode: held until this time
);

-- Keys held under version 1 (waiting or running jobs) stay held, in the default mode.
INSERT INTO unique_keys (key, job_id, mode)
SELECT unique_key, id, 'active' FROM jobs
WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running');

DROP INDEX jobs_unique;

CREATE TABLE slots (
    key  text PRIMARY KEY
);

CREATE TABLE buckets (
    key         text PRIMARY KEY,
    tokens      double precision NOT NULL,
    updated_at  double precision NOT NULL
);

CREATE TABLE paused_tasks (
    task  text PRIMARY KEY
);

CREATE TABLE schedule_marks (
    name     text PRIMARY KEY,
    fire_at  double precision NOT NULL
);

-- reserve's check for its one-statement path: any ready job under flow control in these
-- queues? (Only such jobs are in this index, so it is empty when nobody uses flow control.)
CREATE INDEX jobs_flow ON jobs (queue, run_at)
    WHERE status IN ('scheduled', 'queued') AND (limit_key IS NOT NULL OR rate_key IS NOT NULL);
-- (Running jobs per limit key are counted through jobs_running: running jobs are few, as
-- many as the workers run at once, and one index less keeps finish and reserve cheaper.)

-- A job under a limit that finishes frees a slot: wake idle workers of its queue, since
-- jobs held back behind that key may now run. (Jobs going back to waiting are announced by
-- jobs_changed already.) Row-level with a WHEN clause: other jobs never call the function.
CREATE FUNCTION limit_freed() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    PERFORM pg_notify('chervil_' || TG_TABLE_SCHEMA, NEW.queue);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_limit_freed AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (OLD.status = 'running' AND OLD.limit_key IS NOT NULL
          AND NEW.status IN ('succeeded', 'dead', 'cancelled'))
    EXECUTE FUNCTION limit_freed();

-- Whether reserve must take reserve_flow: a paused task, or a ready job with a limit or
-- rate key in these queues (a probe of the partial index jobs_flow). A function, so that
-- its plan is made once per connection and not with every reserve.
CREATE FUNCTION flow_in_force(p_queues text[], p_now double precision) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM paused_tasks)
        OR EXISTS (SELECT 1 FROM jobs AS f
                   WHERE f.queue = ANY(p_queues) AND f.status IN ('scheduled', 'queued')
                     AND (f.limit_key IS NOT NULL OR f.rate_key IS NOT NULL)
                     AND (f.status = 'queued' OR f.run_at <= p_now));
END
$$;

-- reserve when flow control is in force (a paused task, or ready jobs with a limit or rate
-- key in the queues asked for). One call, one transaction, in READ COMMITTED:
--  1. candidates: ready jobs in reserve order (queues in the order given, then priority,
--     run_at, id), past paused queues and tasks, saturated limit keys and empty buckets as
--     this snapshot sees them, at most p_limit * 4 + 16 per queue; of those, the first
--     p_limit that fit their keys' free slots and tokens (by rank within each key) are
--     the tentative picks;
--  2. the slots and buckets rows of the picks' keys are locked, in key order (so two
--     reserves never deadlock on each other; nothing else locks these rows);
--  3. with a fresh snapshot (each statement of a VOLATILE function takes one), taken
--     after the locks, so every reserve that held them before has committed: the running
--     jobs per key and the tokens per bucket are exact, and the picks are admitted in
--     order until a key is full or a bucket is empty;
--  4. the admitted jobs still waiting are locked (SKIP LOCKED), set running, and the
--     tokens they took are written back.
-- Held-back jobs are not touched: they stay queued with no attempt spent.
CREATE FUNCTION reserve_flow(p_queues text[], p_limit integer, p_worker text,
                             p_lease double precision, p_token text,
                             p_now double precision)
RETURNS SETOF jobs
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET jit = off
AS $$
DECLARE
    paused text[];
    c_ids text[]; c_lk text[]; c_ln integer[]; c_rk text[];
    c_rate double precision[]; c_burst double precision[];
    l_keys text[]; l_run bigint[];
    b_keys text[]; b_tok double precision[]; b_at double precision[];
    b_start double precision[]; b_seen boolean[];
    admitted text[] := ARRAY[]::text[];
    got text[];
    i integer; k integer; b integer;
BEGIN
    -- 1. tentative picks (paused tasks as an array: a plain filter on the index scan,
    --    which then stops at the LIMIT, where a join would read every waiting job)
    SELECT COALESCE(array_agg(task), ARRAY[]::text[]) INTO paused FROM paused_tasks;
    WITH run AS MATERIALIZED (
        SELECT r.limit_key AS key, count(*) AS n FROM jobs AS r
        WHERE r.status = 'running' AND r.limit_key IS NOT NULL
        GROUP BY r.limit_key
    ), cand AS (
        SELECT c.*, q.pos FROM unnest(p_queues) WITH ORDINALITY AS q(name, pos)
        CROSS JOIN LATERAL (
            SELECT w.id, w.priority, w.run_at, w.limit_key, w.limit_n, w.rate_key,
                   w.rate_per_second, w.rate_burst
            FROM jobs AS w
            WHERE w.queue = q.name AND w.status IN ('scheduled', 'queued')
              AND (w.status = 'queued' OR w.run_at <= p_now)
              AND NOT w.task = ANY(paused)
              AND (w.limit_key IS NULL OR NOT EXISTS (
                   SELECT 1 FROM run WHERE run.key = w.limit_key AND run.n >= w.limit_n))
              AND (w.rate_key IS NULL OR NOT EXISTS (
                   SELECT 1 FROM buckets AS e WHERE e.key = w.rate_key
                   AND e.tokens + (p_now - e.updated_at) * w.rate_per_second < 1))
            ORDER BY w.priority DESC, w.run_at, w.id
            LIMIT p_limit * 4 + 16
        ) AS c
        WHERE NOT EXISTS (SELECT 1 FROM queues AS p WHERE p.name = q.name AND p.paused)
    ), ranked AS (
        SELECT cand.*,
               row_number() OVER (ORDER BY pos, priority DESC, run_at, id) AS ord,
               row_number() OVER (PARTITION BY limit_key
                                  ORDER BY pos, priority DESC, run_at, id) AS lrank,
               row_number() OVER (PARTITION BY rate_key
                                  ORDER BY pos, priority DESC, run_at, id) AS rrank
        FROM cand
    ), picks AS (
        SELECT r.* FROM ranked AS r
        LEFT JOIN run ON run.key = r.limit_key
        LEFT JOIN buckets AS e ON e.key = r.rate_key
        WHERE (r.limit_key IS NULL OR r.lrank <= r.limit_n - COALESCE(run.n, 0))
          AND (r.rate_key IS NULL OR r.rrank <= COALESCE(
               least(r.rate_burst, e.tokens + (p_now - e.updated_at) * r.rate_per_second),
               r.rate_burst))
        ORDER BY r.ord
        LIMIT p_limit
    )
    SELECT array_agg(id ORDER BY ord), array_agg(limit_key ORDER BY ord),
           array_agg(limit_n ORDER BY ord), array_agg(rate_key ORDER BY ord),
           array_agg(rate_per_second ORDER BY ord), array_agg(rate_burst ORDER BY ord)
    INTO c_ids, c_lk, c_ln, c_rk, c_rate, c_burst
    FROM picks;
    IF c_ids IS NULL THEN
        RETURN;
    END IF;

    -- 2. lock the keys, in key order; the bucket rows come back in their latest version
    SELECT array_agg(key ORDER BY key) INTO l_keys FROM (
        SELECT s.key FROM slots AS s WHERE s.key = ANY(c_lk) ORDER BY s.key FOR UPDATE
    ) AS locked;
    SELECT array_agg(key ORDER BY key), array_agg(tokens ORDER BY key),
           array_agg(updated_at ORDER BY key)
    INTO b_keys, b_tok, b_at FROM (
        SELECT e.key, e.tokens, e.updated_at FROM buckets AS e
        WHERE e.key = ANY(c_rk) ORDER BY e.key FOR UPDATE
    ) AS locked;

    -- 3. exact counts (a new snapshot), then admit in order
    SELECT array_agg(COALESCE(r.n, 0) ORDER BY x.key) INTO l_run
    FROM unnest(l_keys) AS x(key)
    LEFT JOIN (SELECT j.limit_key, count(*) AS n FROM jobs AS j
               WHERE j.status = 'running' AND j.limit_key = ANY(l_keys)
               GROUP BY j.limit_key) AS r ON r.limit_key = x.key;
    b_start := b_tok;
    b_seen := array_fill(false, ARRAY[COALESCE(array_length(b_keys, 1), 0)]);
    FOR i IN 1 .. array_length(c_ids, 1) LOOP
        k := NULL;
        b := NULL;
        IF c_lk[i] IS NOT NULL THEN
            k := array_position(l_keys, c_lk[i]);
            CONTINUE WHEN k IS NULL OR l_run[k] >= c_ln[i];
        END IF;
        IF c_rk[i] IS NOT NULL THEN
            b := array_position(b_keys, c_rk[i]);
            CONTINUE WHEN b IS NULL;
            IF NOT b_seen[b] THEN  -- refill once, at this job's rate and burst
                b_seen[b] := true;
                b_start[b] := least(c_burst[i], b_tok[b] + (p_now - b_at[b]) * c_rate[i]);
                b_tok[b] := b_start[b];
            END IF;
            CONTINUE WHEN b_tok[b] < 1;
            b_tok[b] := b_tok[b] - 1;
        END IF;
        IF k IS NOT NULL THEN
            l_run[k] := l_run[k] + 1;
        END IF;
        admitted := admitted || c_ids[i];
    END LOOP;

    -- 4. take the admitted jobs that are still waiting; write back the tokens they took
    SELECT array_agg(w.id) INTO got FROM (
        SELECT j.id FROM jobs AS j
        WHERE j.id = ANY(admitted) AND j.status IN ('scheduled', 'queued')
        FOR UPDATE SKIP LOCKED
    ) AS w;
    IF b_keys IS NOT NULL THEN
        UPDATE buckets AS e
        SET tokens = greatest(s.start - (SELECT count(*) FROM jobs AS j
                                         WHERE j.id = ANY(got) AND j.rate_key = e.key), 0),
            updated_at = p_now
        FROM unnest(b_keys, b_start, b_seen) AS s(key, start, seen)
        WHERE e.key = s.key AND s.seen;
    END IF;
    -- (rows missing for a key, which enqueue always creates: made now, used next time)
    INSERT INTO slots (key)
    SELECT DISTINCT x FROM unnest(c_lk) AS x
    WHERE x IS NOT NULL AND NOT x = ANY(COALESCE(l_keys, ARRAY[]::text[]))
    ON CONFLICT DO NOTHING;
    INSERT INTO buckets (key, tokens, updated_at)
    SELECT x.key, max(x.burst), p_now FROM unnest(c_rk, c_burst) AS x(key, burst)
    WHERE x.key IS NOT NULL AND NOT x.key = ANY(COALESCE(b_keys, ARRAY[]::text[]))
    GROUP BY x.key
    ON CONFLICT DO NOTHING;
    IF got IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH taken AS (
        UPDATE jobs AS j
        SET status = 'running', attempts = j.attempts + 1, lease_token = p_token,
            lease_until = p_now + p_lease, started_at = p_now, worker = p_worker
        WHERE j.id = ANY(got)
        RETURNING j.*
    )
    SELECT * FROM taken;
END
$$;
