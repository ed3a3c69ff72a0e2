-- chervil PostgreSQL schema, version 6: jobs of a paused task are parked as well.
--
-- Before, reserve stepped over every job of a paused task at each call (12 ms with 20,000
-- of them ahead of the rest of the queue, and growing). Now reserve_flow parks them (park =
-- 't') as it meets them at the head of a queue, 1,000 per reserve, and resuming the task
-- brings them all back (resume_task). A task resumed while a reserve was parking its jobs
-- has them brought back by unpark_resumed_tasks, run where unpark_free_keys runs (recover,
-- and a reserve that comes back short).
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

-- reserve_flow as in version 5, with the jobs of paused tasks among its candidates (never
-- its picks) and parked when met at the head (step 1b).
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
