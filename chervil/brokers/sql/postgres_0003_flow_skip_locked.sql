-- chervil PostgreSQL schema, version 3: reserve_flow takes its candidates with SKIP LOCKED.
--
-- Version 2 chose its picks from a plain snapshot and locked them last. Two workers
-- reserving at once chose the same picks, queued on the same slot rows, and the second
-- found its picks taken and returned nothing (its worker then idled until a wake-up).
-- Now the picks are locked first, with SKIP LOCKED, in reserve order, so a concurrent
-- reserve takes the next ones, and two reserves meet on a slot or bucket row only when
-- their picks share a key. The rest is as before:
--  1. candidates: ready jobs in reserve order (queues in the order given, then priority,
--     run_at, id), past paused queues and tasks, saturated limit keys and empty buckets as
--     this snapshot sees them, at most p_limit * 4 + 16 per queue; of those, the ones
--     that fit their keys' free slots and tokens (by rank within each key) are row-locked
--     in that order (SKIP LOCKED) until p_limit are held: the tentative picks;
--  2. the slots and buckets rows of the picks' keys are locked, in key order. Nothing
--     waits while holding a slot or bucket lock except for another one later in key
--     order, and job rows are only ever taken with SKIP LOCKED here: no deadlock;
--  3. with a fresh snapshot (each statement of a VOLATILE function takes one), taken
--     after the locks, so every reserve that held them before has committed: the running
--     jobs per key and the tokens per bucket are exact, and the picks are admitted in
--     order until a key is full or a bucket is empty;
--  4. the admitted jobs (locked since step 1, so still waiting) are set running,
--     and the tokens they took are written back.
-- Candidates not admitted are released at commit untouched: queued, no attempt spent.
CREATE OR REPLACE FUNCTION reserve_flow(p_queues text[], p_limit integer, p_worker text,
                                        p_lease double precision, p_token text,
                                        p_now double precision)
RETURNS SETOF jobs
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET jit = off
-- plans made once per connection: planning the candidate statement anew at each call
-- (custom plans) took 0.5 ms, more than running it
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    paused text[];
    r_keys text[]; r_n bigint[]; r_full text[];
    c_ids text[]; c_lk text[]; c_ln integer[]; c_rk text[];
    c_rate double precision[]; c_burst double precision[];
    l_keys text[]; l_run bigint[];
    b_keys text[]; b_tok double precision[]; b_at double precision[];
    b_seen boolean[];
    admitted text[] := ARRAY[]::text[];
    i integer; k integer; b integer;
BEGIN
    -- 1. tentative picks (paused tasks as an array: a plain filter on the index scan,
    --    which then stops at the LIMIT, where a join would read every waiting job)
    SELECT COALESCE(array_agg(task), ARRAY[]::text[]) INTO paused FROM paused_tasks;
    --    running jobs per limit key as arrays (looked up in C, not joined per candidate);
    --    a key is full when it runs as many as its smallest limit
    SELECT COALESCE(array_agg(r.key), ARRAY[]::text[]), COALESCE(array_agg(r.n), ARRAY[]::bigint[]),
           COALESCE(array_agg(r.key) FILTER (WHERE r.n >= r.lim), ARRAY[]::text[])
    INTO r_keys, r_n, r_full
    FROM (SELECT j.limit_key AS key, count(*) AS n, min(j.limit_n) AS lim FROM jobs AS j
          WHERE j.status = 'running' AND j.limit_key IS NOT NULL
          GROUP BY j.limit_key) AS r;
    WITH cand AS (
        SELECT c.*, q.pos FROM unnest(p_queues) WITH ORDINALITY AS q(name, pos)
        CROSS JOIN LATERAL (
            SELECT w.id, w.priority, w.run_at, w.limit_key, w.limit_n, w.rate_key,
                   w.rate_per_second, w.rate_burst
            FROM jobs AS w
            WHERE w.queue = q.name AND w.status IN ('scheduled', 'queued')
              AND (w.status = 'queued' OR w.run_at <= p_now)
              AND NOT w.task = ANY(paused)
              AND (w.limit_key IS NULL OR NOT w.limit_key = ANY(r_full))
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
    ), fits AS (
        SELECT r.* FROM ranked AS r
        LEFT JOIN buckets AS e ON e.key = r.rate_key
        WHERE (r.limit_key IS NULL OR r.lrank <= r.limit_n
               - COALESCE(r_n[array_position(r_keys, r.limit_key)], 0))
          AND (r.rate_key IS NULL OR r.rrank <= COALESCE(
               least(r.rate_burst, e.tokens + (p_now - e.updated_at) * r.rate_per_second),
               r.rate_burst))
    ), picks AS (
        -- locked lazily under the LIMIT, in order: a row another reserve holds is
        -- skipped and the next one taken; one taken since this snapshot fails the recheck
        SELECT f.* FROM fits AS f JOIN jobs AS j ON j.id = f.id
        WHERE j.status IN ('scheduled', 'queued')
        ORDER BY f.ord
        LIMIT p_limit
        FOR UPDATE OF j SKIP LOCKED
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

    -- 4. write back the tokens taken; make missing key rows (enqueue always creates
    --    them: made now, used next time); take the admitted jobs
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
    IF cardinality(admitted) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH taken AS (
        UPDATE jobs AS j
        SET status = 'running', attempts = j.attempts + 1, lease_token = p_token,
            lease_until = p_now + p_lease, started_at = p_now, worker = p_worker
        FROM unnest(admitted) AS a(id)
        WHERE j.id = a.id
        RETURNING j.*
    )
    SELECT * FROM taken;
END
$$;
