-- chervil PostgreSQL schema, version 7: reserve_flow looks up fewer rows.
--
-- Measured on a reserve of 72 jobs with 1,000 lock keys (auto_explain, nested statements):
-- 11.8 ms, of which 5.1 ms picking and 1.9 ms locking the keys' slots rows.
--  * picks joined every row of fits (every candidate) to jobs, a primary-key lookup
--    each, before sorting them and taking p_limit; it now joins the first 2 * p_limit + 16
--    in order, room enough for the rows concurrent reserves have locked (a reserve that
--    comes back short is followed by another);
--  * the slots and buckets rows of the keys were found with "key = ANY(a) OR key = ANY(b)",
--    which the generic plan answered with a sequential scan of the table: a cost that grew
--    with the number of keys ever used (1.8 ms at 1,000). They are now looked up one key at
--    a time in the primary key, in key order (the order every reserve locks them in).
--  * the candidates are the first p_limit + 64 waiting jobs, not 4 * p_limit + 16: as far
--    past a full batch as before past a batch of 16, and for a prefetching worker's batch
--    of 72, 136 rows read and ranked (three window sorts) instead of 304 (a reserve of 72
--    jobs of 1,000 lock keys: 6.1-7.3 -> 4.7-5.1 ms, in-process, interleaved runs).
-- Otherwise reserve_flow is as in version 6 (see postgres_0006_parked_rate_jobs.sql).
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
    e_keys text[]; e_rate double precision[]; e_burst double precision[];
    e_tok double precision[] := ARRAY[]::double precision[];
    l_keys text[]; l_run bigint[];
    b_keys text[]; b_tok double precision[]; b_at double precision[];
    b_seen boolean[]; b_rate double precision[]; b_burst double precision[];
    admitted text[] := ARRAY[]::text[];
    i integer; k integer; b integer;
BEGIN
    -- 0. bring back the parked jobs of these queues whose token is due (queue by queue,
    --    in due order: the generic plan of a test of all the queues at once scanned jobs)
    IF EXISTS (SELECT 1 FROM unnest(p_queues) AS q(name)
               CROSS JOIN LATERAL (
                   SELECT d.park_due FROM jobs AS d
                   WHERE d.queue = q.name AND d.park = 'r'
                     AND d.status IN ('scheduled', 'queued')
                   ORDER BY d.park_due LIMIT 1) AS d
               WHERE d.park_due <= p_now) THEN
        UPDATE jobs SET park = NULL, park_due = NULL
        WHERE id IN (SELECT d.id FROM unnest(p_queues) AS q(name)
                     CROSS JOIN LATERAL (
                         SELECT d.id FROM jobs AS d
                         WHERE d.queue = q.name AND d.park = 'r'
                           AND d.status IN ('scheduled', 'queued') AND d.park_due <= p_now
                         ORDER BY d.park_due LIMIT 1000
                         FOR UPDATE SKIP LOCKED) AS d);
    END IF;

    -- 1. tentative picks, as in version 3; jobs of keys full in this snapshot are
    --    candidates (never picks), and their keys are noted as head_full; so are jobs
    --    of empty buckets (keys noted as e_keys)
    SELECT COALESCE(array_agg(task), ARRAY[]::text[]) INTO paused FROM paused_tasks;
    SELECT COALESCE(array_agg(r.key), ARRAY[]::text[]), COALESCE(array_agg(r.n), ARRAY[]::bigint[]),
           COALESCE(array_agg(r.key) FILTER (WHERE r.n >= r.lim), ARRAY[]::text[])
    INTO r_keys, r_n, r_full
    FROM (SELECT j.limit_key AS key, count(*) AS n, min(j.limit_n) AS lim FROM jobs AS j
          WHERE j.status = 'running' AND j.limit_key IS NOT NULL
          GROUP BY j.limit_key) AS r;
    WITH cand AS (
        SELECT c.*, q.pos, c.limit_key = ANY(r_full) AS full_key,
               c.task = ANY(paused) AS paused_task,
               c.rate_key IS NOT NULL AND EXISTS (
                   SELECT 1 FROM buckets AS e WHERE e.key = c.rate_key
                   AND e.tokens + (p_now - e.updated_at) * c.rate_per_second < 1
               ) AS empty_bucket
        FROM unnest(p_queues) WITH ORDINALITY AS q(name, pos)
        CROSS JOIN LATERAL (
            SELECT w.id, w.task, w.priority, w.run_at, w.limit_key, w.limit_n, w.rate_key,
                   w.rate_per_second, w.rate_burst
            FROM jobs AS w
            WHERE w.queue = q.name AND w.status IN ('scheduled', 'queued')
              AND w.park IS NULL
              AND (w.status = 'queued' OR w.run_at <= p_now)
            ORDER BY w.priority DESC, w.run_at, w.id
            LIMIT p_limit + 64
        ) AS c
        WHERE NOT EXISTS (SELECT 1 FROM queues AS p WHERE p.name = q.name AND p.paused)
    ), ranked AS (
        SELECT cand.*,
               row_number() OVER (ORDER BY pos, priority DESC, run_at, id) AS ord,
               row_number() OVER (PARTITION BY limit_key
                                  ORDER BY pos, priority DESC, run_at, id) AS lrank,
               row_number() OVER (PARTITION BY rate_key
                                  ORDER BY pos, priority DESC, run_at, id) AS rrank
        FROM cand WHERE full_key IS NOT TRUE AND NOT paused_task AND NOT empty_bucket
    ), fits AS (
        SELECT r.* FROM ranked AS r
        LEFT JOIN buckets AS e ON e.key = r.rate_key
        WHERE (r.limit_key IS NULL OR r.lrank <= r.limit_n
               - COALESCE(r_n[array_position(r_keys, r.limit_key)], 0))
          AND (r.rate_key IS NULL OR r.rrank <= COALESCE(
               least(r.rate_burst, e.tokens + (p_now - e.updated_at) * r.rate_per_second),
               r.rate_burst))
    ), empty AS (
        SELECT DISTINCT ON (c.rate_key) c.rate_key, c.rate_per_second, c.rate_burst
        FROM cand AS c
        WHERE c.empty_bucket AND NOT c.paused_task AND c.full_key IS NOT TRUE
        ORDER BY c.rate_key
    ), picks AS (
        -- (no test of park here: it would lead the planner to jobs_ready instead of the
        -- primary key; a job parked since this snapshot is admitted, or not, under its
        -- key's lock like any other, and taken unparked)
        -- (the first of fits only: joining all of them, 4 * p_limit + 16, to jobs cost a
        -- primary-key lookup each before the sort; twice the batch leaves room for the
        -- rows a concurrent reserve has locked)
        SELECT f.* FROM (SELECT * FROM fits ORDER BY ord LIMIT p_limit * 2 + 16) AS f
        JOIN jobs AS j ON j.id = f.id
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
           (SELECT array_agg(DISTINCT c.task) FROM cand AS c WHERE c.paused_task),
           (SELECT array_agg(e.rate_key ORDER BY e.rate_key) FROM empty AS e),
           (SELECT array_agg(e.rate_per_second ORDER BY e.rate_key) FROM empty AS e),
           (SELECT array_agg(e.rate_burst ORDER BY e.rate_key) FROM empty AS e)
    INTO c_ids, c_lk, c_ln, c_rk, c_rate, c_burst, head_full, head_paused,
         e_keys, e_rate, e_burst
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
    IF c_ids IS NULL AND head_full IS NULL AND e_keys IS NULL THEN
        PERFORM unpark_free_keys(64, '');
        PERFORM unpark_resumed_tasks(64);
        RETURN;
    END IF;
    c_ids := COALESCE(c_ids, ARRAY[]::text[]);

    -- 2. lock the keys (the picks', the full ones and the empty buckets met at the head),
    --    in key order
    SELECT array_agg(key ORDER BY key) INTO l_keys FROM (
        SELECT s.key
        FROM (SELECT DISTINCT u.key FROM unnest(c_lk || head_full) AS u(key)
              WHERE u.key IS NOT NULL ORDER BY u.key) AS u
        CROSS JOIN LATERAL (SELECT t.key FROM slots AS t WHERE t.key = u.key FOR UPDATE) AS s
    ) AS locked;
    SELECT array_agg(key ORDER BY key), array_agg(tokens ORDER BY key),
           array_agg(updated_at ORDER BY key)
    INTO b_keys, b_tok, b_at FROM (
        SELECT e.key, e.tokens, e.updated_at
        FROM (SELECT DISTINCT u.key FROM unnest(c_rk || e_keys) AS u(key)
              WHERE u.key IS NOT NULL ORDER BY u.key) AS u
        CROSS JOIN LATERAL (SELECT t.key, t.tokens, t.updated_at FROM buckets AS t
                            WHERE t.key = u.key FOR UPDATE) AS e
    ) AS locked;

    -- 3. exact counts (a new snapshot), then admit in order
    SELECT array_agg(COALESCE(r.n, 0) ORDER BY x.key) INTO l_run
    FROM unnest(l_keys) AS x(key)
    LEFT JOIN (SELECT j.limit_key, count(*) AS n FROM jobs AS j
               WHERE j.status = 'running' AND j.limit_key = ANY(l_keys)
               GROUP BY j.limit_key) AS r ON r.limit_key = x.key;
    b_seen := array_fill(false, ARRAY[COALESCE(array_length(b_keys, 1), 0)]);
    b_rate := array_fill(NULL::double precision, ARRAY[COALESCE(array_length(b_keys, 1), 0)]);
    b_burst := b_rate;
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
                b_rate[b] := c_rate[i];
                b_burst[b] := c_burst[i];
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

    -- 4. write back the tokens taken (and when the bucket is full again); make missing
    --    key rows
    IF b_keys IS NOT NULL THEN
        UPDATE buckets AS e SET tokens = greatest(s.left_, 0), updated_at = p_now,
                                full_at = p_now + (s.burst - greatest(s.left_, 0)) / s.rate
        FROM unnest(b_keys, b_tok, b_seen, b_rate, b_burst) AS s(key, left_, seen, rate, burst)
        WHERE e.key = s.key AND s.seen;
    END IF;
    INSERT INTO slots (key)
    SELECT DISTINCT x FROM unnest(c_lk) AS x
    WHERE x IS NOT NULL AND NOT x = ANY(COALESCE(l_keys, ARRAY[]::text[]))
    ON CONFLICT DO NOTHING;
    INSERT INTO buckets (key, tokens, updated_at, full_at)
    SELECT x.key, max(x.burst), p_now, p_now FROM unnest(c_rk, c_burst) AS x(key, burst)
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

    -- 6. park the due jobs of the keys met with an empty bucket at the head, from the
    --    head, each due when its token is: the n-th job in line when the bucket (exact now,
    --    under its lock, after the tokens taken above) will have n tokens, and not before
    --    n / rate after the key's last parked job; not the ones this reserve takes, nor the
    --    ones with a token now
    IF e_keys IS NOT NULL THEN
        FOR i IN 1 .. cardinality(e_keys) LOOP
            b := array_position(b_keys, e_keys[i]);
            e_tok := e_tok || CASE
                WHEN b IS NULL THEN e_burst[i]
                WHEN b_seen[b] THEN b_tok[b]
                ELSE least(e_burst[i], b_tok[b] + (p_now - b_at[b]) * e_rate[i]) END;
        END LOOP;
        UPDATE jobs AS j SET park = 'r', park_due = p.due
        FROM (
            SELECT h.id, greatest(p_now + (h.n - x.tokens) / x.rate,
                                  l.last + h.n / x.rate) AS due
            FROM unnest(e_keys, e_tok, e_rate) AS x(key, tokens, rate)
            CROSS JOIN LATERAL (
                SELECT max(d.park_due) AS last FROM jobs AS d
                WHERE d.rate_key = x.key AND d.park = 'r'
                  AND d.status IN ('scheduled', 'queued')
            ) AS l
            CROSS JOIN LATERAL (
                SELECT s.id, row_number() OVER (ORDER BY s.priority DESC, s.run_at, s.id) AS n
                FROM (SELECT w.id, w.priority, w.run_at FROM jobs AS w
                      WHERE w.rate_key = x.key AND w.status IN ('scheduled', 'queued')
                        AND w.park IS NULL AND (w.status = 'queued' OR w.run_at <= p_now)
                        AND NOT w.id = ANY(admitted)
                      ORDER BY w.priority DESC, w.run_at, w.id
                      LIMIT 1000
                      FOR UPDATE SKIP LOCKED) AS s
            ) AS h
        ) AS p
        WHERE j.id = p.id AND p.due > p_now;
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
            lease_until = p_now + p_lease, started_at = p_now, worker = p_worker, park = NULL,
            park_due = NULL
        FROM unnest(admitted) AS a(id)
        WHERE j.id = a.id
        RETURNING j.*
    )
    SELECT * FROM taken;
END
$$;
