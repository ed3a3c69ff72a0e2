-- chervil PostgreSQL schema, version 5: jobs waiting for a full limit key, or of a paused
-- task, are parked.
--
-- Before, a job whose limit key was full stayed in jobs_waiting and every reserve stepped
-- over it: with 20,000 jobs queued behind one lock, each reserve read all 20,000 (9.5 ms),
-- and with 1,000,000 it would read a million. Now reserve_flow parks them (park = 'l'): a
-- parked job keeps its status (queued, or scheduled and due) and leaves the indexes
-- reserve reads; it comes back when a slot of its key frees. Parking is lazy: only when a
-- reserve meets jobs of a full key at the head of its queue, so jobs whose key is full only
-- now and then are never touched.
--
--  * reserve_flow: its candidates include jobs of full keys; when some are among them, it
--    locks their keys' slots rows with those of its picks (key order), counts the running
--    jobs once more, and parks up to 1,000 waiting jobs of each key that is still full,
--    from the head (the UPDATE wakes the queue, so the worker reserves again at once);
--  * jobs_slot_freed (row trigger, replacing jobs_limit_freed): a job of a limit key that
--    stops running (finished, dead, cancelled, released, recovered) brings back the first
--    parked job of its key, and wakes the queue;
--  * unpark_free_keys: a sweep over the parked keys that brings back as many jobs as each
--    key has free slots. A job parked while the last running job of its key was finishing
--    (the finish saw nothing to bring back) is freed by it: recover() runs it, and so does a
--    reserve that comes back short. Nothing waits on a parked job for longer than that.
--
-- Jobs of a paused task are parked the same way (park = 't', before: 12 ms per reserve
-- past 20,000 of them), 1,000 per reserve, and resuming the task brings them all back
-- (resume_task); unpark_resumed_tasks catches a resume that raced a parking, where
-- unpark_free_keys runs.
--
-- Building the new indexes reads the whole table once, under a lock that holds writes.
ALTER TABLE jobs ADD COLUMN park text;

-- reserve: waiting jobs not parked, in reserve order (replaces jobs_waiting)
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at, id)
    WHERE status IN ('scheduled', 'queued') AND park IS NULL;
DROP INDEX jobs_waiting;
-- reserve's check for its one-statement path: ready flow-controlled jobs, or parked ones
DROP INDEX jobs_flow;
CREATE INDEX jobs_flow ON jobs (queue, run_at)
    WHERE status IN ('scheduled', 'queued') AND park IS NULL
      AND (limit_key IS NOT NULL OR rate_key IS NOT NULL);
CREATE INDEX jobs_parked_queue ON jobs (queue)
    WHERE status IN ('scheduled', 'queued') AND park IS NOT NULL;
-- parking (a key's ready jobs from its head) and bringing back (its parked ones, same order)
CREATE INDEX jobs_key_ready ON jobs (limit_key, priority DESC, run_at, id)
    WHERE status IN ('scheduled', 'queued') AND park IS NULL AND limit_key IS NOT NULL;
CREATE INDEX jobs_key_parked ON jobs (limit_key, priority DESC, run_at, id)
    WHERE status IN ('scheduled', 'queued') AND park = 'l';

CREATE OR REPLACE FUNCTION flow_in_force(p_queues text[], p_now double precision)
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
-- a plan made once per connection: planned at each call (the partial indexes of jobs each
-- tried against its predicates), it cost 0.5 ms, five times its run
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM paused_tasks)
        OR EXISTS (SELECT 1 FROM jobs AS f
                   WHERE f.queue = ANY(p_queues) AND f.status IN ('scheduled', 'queued')
                     AND f.park IS NULL
                     AND (f.limit_key IS NOT NULL OR f.rate_key IS NOT NULL)
                     AND (f.status = 'queued' OR f.run_at <= p_now))
        OR EXISTS (SELECT 1 FROM jobs AS p
                   WHERE p.queue = ANY(p_queues) AND p.status IN ('scheduled', 'queued')
                     AND p.park IS NOT NULL);
END
$$;

-- Bring back the first parked job of a limit key whose running job stopped running.
DROP TRIGGER jobs_limit_freed ON jobs;
DROP FUNCTION limit_freed();
CREATE FUNCTION slot_freed() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    -- (tested first: an UPDATE, even of no row, runs the statement triggers of jobs)
    IF EXISTS (SELECT 1 FROM jobs AS p WHERE p.limit_key = OLD.limit_key AND p.park = 'l'
               AND p.status IN ('scheduled', 'queued')) THEN
        -- SKIP LOCKED: two finishes of one key bring back two different jobs
        UPDATE jobs SET park = NULL
        WHERE id = (SELECT p.id FROM jobs AS p
                    WHERE p.limit_key = OLD.limit_key AND p.park = 'l'
                      AND p.status IN ('scheduled', 'queued')
                    ORDER BY p.priority DESC, p.run_at, p.id
                    LIMIT 1 FOR UPDATE SKIP LOCKED);
    END IF;
    -- jobs held back behind this key may run now (a parked job brought back is announced
    -- by jobs_changed as well)
    PERFORM pg_notify('chervil_' || TG_TABLE_SCHEMA, NEW.queue);
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_slot_freed AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (OLD.status = 'running' AND OLD.limit_key IS NOT NULL AND NEW.status <> 'running')
    EXECUTE FUNCTION slot_freed();

-- For each parked limit key (at most p_keys of them, from p_after on, in key order), bring
-- back as many parked jobs as the key has slots that neither running nor ready jobs of the
-- key take. Returns how many came back.
CREATE FUNCTION unpark_free_keys(p_keys integer, p_after text) RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    k text := p_after;
    free bigint;
    moved integer;
    total integer := 0;
BEGIN
    FOR i IN 1 .. p_keys LOOP
        SELECT p.limit_key INTO k FROM jobs AS p
        WHERE p.park = 'l' AND p.status IN ('scheduled', 'queued') AND p.limit_key > k
        ORDER BY p.limit_key LIMIT 1;
        EXIT WHEN NOT FOUND;
        SELECT h.limit_n
               - (SELECT count(*) FROM jobs AS r WHERE r.status = 'running' AND r.limit_key = k)
               - (SELECT count(*) FROM jobs AS w WHERE w.limit_key = k
                  AND w.status IN ('scheduled', 'queued') AND w.park IS NULL)
        INTO free
        FROM jobs AS h
        WHERE h.limit_key = k AND h.park = 'l' AND h.status IN ('scheduled', 'queued')
        ORDER BY h.priority DESC, h.run_at, h.id LIMIT 1;
        CONTINUE WHEN free IS NULL OR free <= 0;
        UPDATE jobs SET park = NULL
        WHERE id IN (SELECT p.id FROM jobs AS p
                     WHERE p.limit_key = k AND p.park = 'l'
                       AND p.status IN ('scheduled', 'queued')
                     ORDER BY p.priority DESC, p.run_at, p.id
                     LIMIT free FOR UPDATE SKIP LOCKED);
        GET DIAGNOSTICS moved = ROW_COUNT;
        total := total + moved;
    END LOOP;
    RETURN total;
END
$$;

-- bringing back a resumed task's parked jobs
CREATE INDEX jobs_task_parked ON jobs (task)
    WHERE status IN ('scheduled', 'queued') AND park = 't';

-- Bring back the parked jobs of tasks no longer paused (at most p_tasks tasks, in order).
CREATE FUNCTION unpark_resumed_tasks(p_tasks integer) RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    t text := '';
    moved integer;
    total integer := 0;
BEGIN
    FOR i IN 1 .. p_tasks LOOP
        SELECT p.task INTO t FROM jobs AS p
        WHERE p.park = 't' AND p.status IN ('scheduled', 'queued') AND p.task > t
        ORDER BY p.task LIMIT 1;
        EXIT WHEN NOT FOUND;
        CONTINUE WHEN EXISTS (SELECT 1 FROM paused_tasks AS s WHERE s.task = t);
        UPDATE jobs SET park = NULL
        WHERE id IN (SELECT p.id FROM jobs AS p
                     WHERE p.task = t AND p.park = 't' AND p.status IN ('scheduled', 'queued')
                     FOR UPDATE SKIP LOCKED);
        GET DIAGNOSTICS moved = ROW_COUNT;
        total := total + moved;
    END LOOP;
    RETURN total;
END
$$;

-- reserve when flow control is in force: as in version 3 (see postgres_0003), except that
-- jobs of full keys and of paused tasks are candidates too (never picks), so that reserve
-- sees them at the head of the queue and parks them (steps 1b and 5); a reserve that comes
-- back short sweeps the parked keys and tasks.
CREATE OR REPLACE FUNCTION reserve_flow(p_queues text[], p_limit integer, p_worker text,
                                        p_lease double precision, p_token text,
                                        p_now double precision)
RETURNS SETOF jobs
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET jit = off
SET plan_cache_mode = force_generic_plan
SET enable_bitmapscan = off
AS $$
DECLARE
    paused text[];
    r_keys text[]; r_n bigint[]; r_full text[];
    c_ids text[]; c_lk text[]; c_ln integer[]; c_rk text[];
    c_rate double precision[]; c_burst double precision[];
    head_full text[]; head_paused text[];
    l_keys text[]; l_run bigint[];
    b_keys text[]; b_tok double precision[]; b_at double precision[];
    b_seen boolean[];
    admitted text[] := ARRAY[]::text[];
    i integer; k integer; b integer;
BEGIN
    -- 1. tentative picks, as in version 3; jobs of keys full in this snapshot are
    --    candidates (never picks), and their keys are noted as head_full
    SELECT COALESCE(array_agg(task), ARRAY[]::text[]) INTO paused FROM paused_tasks;
    SELECT COALESCE(array_agg(r.key), ARRAY[]::text[]), COALESCE(array_agg(r.n), ARRAY[]::bigint[]),
           COALESCE(array_agg(r.key) FILTER (WHERE r.n >= r.lim), ARRAY[]::text[])
    INTO r_keys, r_n, r_full
    FROM (SELECT j.limit_key AS key, count(*) AS n, min(j.limit_n) AS lim FROM jobs AS j
          WHERE j.status = 'running' AND j.limit_key IS NOT NULL
          GROUP BY j.limit_key) AS r;
    WITH cand AS (
        SELECT c.*, q.pos, c.limit_key = ANY(r_full) AS full_key,
               c.task = ANY(paused) AS paused_task
        FROM unnest(p_queues) WITH ORDINALITY AS q(name, pos)
        CROSS JOIN LATERAL (
            SELECT w.id, w.task, w.priority, w.run_at, w.limit_key, w.limit_n, w.rate_key,
                   w.rate_per_second, w.rate_burst
            FROM jobs AS w
            WHERE w.queue = q.name AND w.status IN ('scheduled', 'queued')
              AND w.park IS NULL
              AND (w.status = 'queued' OR w.run_at <= p_now)
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
        FROM cand WHERE full_key IS NOT TRUE AND NOT paused_task
    ), fits AS (
        SELECT r.* FROM ranked AS r
        LEFT JOIN buckets AS e ON e.key = r.rate_key
        WHERE (r.limit_key IS NULL OR r.lrank <= r.limit_n
               - COALESCE(r_n[array_position(r_keys, r.limit_key)], 0))
          AND (r.rate_key IS NULL OR r.rrank <= COALESCE(
               least(r.rate_burst, e.tokens + (p_now - e.updated_at) * r.rate_per_second),
               r.rate_burst))
    ), picks AS (
        -- (no test of park here: it would lead the planner to jobs_ready instead of the
        -- primary key; a job parked since this snapshot is admitted, or not, under its
        -- key's lock like any other, and taken unparked)
        SELECT f.* FROM fits AS f JOIN jobs AS j ON j.id = f.id
        WHERE j.status IN ('scheduled', 'queued')
        ORDER BY f.ord
        LIMIT p_limit
        FOR UPDATE OF j SKIP LOCKED
    )
    SELECT array_agg(id ORDER BY ord), array_agg(limit_key ORDER BY ord),
           array_agg(limit_n ORDER BY ord), array_agg(rate_key ORDER BY ord),
           array_agg(rate_per_second ORDER BY ord), array_agg(rate_burst ORDER BY ord),
           (SELECT array_agg(DISTINCT c.limit_key) FROM cand AS c
            WHERE c.full_key AND NOT c.paused_task),
           (SELECT array_agg(DISTINCT c.task) FROM cand AS c WHERE c.paused_task)
    INTO c_ids, c_lk, c_ln, c_rk, c_rate, c_burst, head_full, head_paused
    FROM picks;
    -- 1b. park the due jobs of the paused tasks met at the head (still paused now; a task
    --     resumed before this commits has its jobs brought back by the sweep)
    IF head_paused IS NOT NULL THEN
        UPDATE jobs SET park = 't'
        WHERE id IN (
            SELECT p.id FROM unnest(p_queues) AS q(name)
            CROSS JOIN LATERAL (
                SELECT w.id FROM jobs AS w
                WHERE w.queue = q.name AND w.status IN ('scheduled', 'queued')
                  AND w.park IS NULL AND (w.status = 'queued' OR w.run_at <= p_now)
                  AND w.task = ANY(head_paused)
                  AND EXISTS (SELECT 1 FROM paused_tasks AS t WHERE t.task = w.task)
                ORDER BY w.priority DESC, w.run_at, w.id
                LIMIT 1000
                FOR UPDATE SKIP LOCKED
            ) AS p);
    END IF;
    IF c_ids IS NULL AND head_full IS NULL THEN
        PERFORM unpark_free_keys(64, '');
        PERFORM unpark_resumed_tasks(64);
        RETURN;
    END IF;
    c_ids := COALESCE(c_ids, ARRAY[]::text[]);

    -- 2. lock the keys (the picks' and the full ones met at the head), in key order
    SELECT array_agg(key ORDER BY key) INTO l_keys FROM (
        SELECT s.key FROM slots AS s WHERE s.key = ANY(c_lk) OR s.key = ANY(head_full)
        ORDER BY s.key FOR UPDATE
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
    b_seen := array_fill(false, ARRAY[COALESCE(array_length(b_keys, 1), 0)]);
    FOR i IN 1 .. COALESCE(array_length(c_ids, 1), 0) LOOP
        k := NULL;
        b := NULL;
        IF c_lk[i] IS NOT NULL THEN
            k := array_position(l_keys, c_lk[i]);
            CONTINUE WHEN k IS NULL OR l_run[k] >= c_ln[i];
        END IF;
        IF c_rk[i] IS NOT NULL THEN
            b := array_position(b_keys, c_rk[i]);
            CONTINUE WHEN b IS NULL;
            IF NOT b_seen[b] THEN
                b_seen[b] := true;
                b_tok[b] := least(c_burst[i], b_tok[b] + (p_now - b_at[b]) * c_rate[i]);
            END IF;
            CONTINUE WHEN b_tok[b] < 1;
            b_tok[b] := b_tok[b] - 1;
        END IF;
        IF k IS NOT NULL THEN
            l_run[k] := l_run[k] + 1;
        END IF;
        admitted := admitted || c_ids[i];
    END LOOP;

    -- 4. write back the tokens taken; make missing key rows
    IF b_keys IS NOT NULL THEN
        UPDATE buckets AS e SET tokens = greatest(s.left_, 0), updated_at = p_now
        FROM unnest(b_keys, b_tok, b_seen) AS s(key, left_, seen)
        WHERE e.key = s.key AND s.seen;
    END IF;
    INSERT INTO slots (key)
    SELECT DISTINCT x FROM unnest(c_lk) AS x
    WHERE x IS NOT NULL AND NOT x = ANY(COALESCE(l_keys, ARRAY[]::text[]))
    ON CONFLICT DO NOTHING;
    INSERT INTO buckets (key, tokens, updated_at)
    SELECT x.key, max(x.burst), p_now FROM unnest(c_rk, c_burst) AS x(key, burst)
    WHERE x.key IS NOT NULL AND NOT x.key = ANY(COALESCE(b_keys, ARRAY[]::text[]))
    GROUP BY x.key
    ON CONFLICT DO NOTHING;

    -- 5. park the due jobs of the keys met full at the head that are full now (with the
    --    jobs admitted above), from the head; not the ones this reserve takes
    IF head_full IS NOT NULL THEN
        UPDATE jobs SET park = 'l'
        WHERE id IN (
            SELECT p.id FROM unnest(l_keys, l_run) AS x(key, n)
            CROSS JOIN LATERAL (
                SELECT w.id FROM jobs AS w
                WHERE w.limit_key = x.key AND w.status IN ('scheduled', 'queued')
                  AND w.park IS NULL AND (w.status = 'queued' OR w.run_at <= p_now)
                  AND w.limit_n <= x.n AND NOT w.id = ANY(admitted)
                ORDER BY w.priority DESC, w.run_at, w.id
                LIMIT 1000
                FOR UPDATE SKIP LOCKED
            ) AS p
            WHERE x.key = ANY(head_full));
    END IF;

    IF cardinality(admitted) < p_limit THEN
        PERFORM unpark_free_keys(64, '');
        PERFORM unpark_resumed_tasks(64);
    END IF;
    IF cardinality(admitted) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH taken AS (
        UPDATE jobs AS j
        SET status = 'running', attempts = j.attempts + 1, lease_token = p_token,
            lease_until = p_now + p_lease, started_at = p_now, worker = p_worker, park = NULL
        FROM unnest(admitted) AS a(id)
        WHERE j.id = a.id
        RETURNING j.*
    )
    SELECT * FROM taken;
END
$$;
