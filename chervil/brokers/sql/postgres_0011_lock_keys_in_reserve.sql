-- chervil PostgreSQL schema, version 11: a reserve statement of its own (reserve_keys)
-- admits the jobs of lock keys and rate keys, and reserve_flow serves only the rest of flow
-- control.
--
-- Every reserve under flow control used to go through reserve_flow: it read twice the
-- batch of candidates, sorted them out in PL/pgSQL, and locked and recounted every key.
-- A reserve of 32 jobs of 1,000 lock keys cost 1.63 times a plain one, and a drain of such
-- jobs ran at 0.77 of the plain drain (python -m bench calls / flow --broker postgres).
--
-- A lock key ("lock:...", always a limit of one) is now exact by the database's own
-- uniqueness: the unique partial index jobs_lock_running holds the running job of each key
-- of limit one, so no two can run, whichever path admitted them. When the ready jobs of the
-- queues asked for carry no key but lock keys and rate keys (never both on one job), no
-- task is paused and no job of the queues is parked for a task or a token, flow_mode
-- answers 1. The reserve statement then says so, and the broker sends reserve_keys for
-- those queues until it meets something else. reserve_keys takes the first waiting jobs as
-- the plain reserve does. Of those, it admits a job of a lock key when it is the first of
-- its key in the batch, its key has no running job in the statement's snapshot, and the
-- key's advisory lock (transaction-scoped, tried, never waited for) is free; and the jobs
-- of a rate key as far as the key's bucket, locked in key order, has tokens, which it
-- takes (take_tokens). When it leaves a job out, it says so, and the broker runs the exact
-- path (reserve_flow), which parks the jobs of held keys and empty buckets. reserve_flow
-- takes the same advisory lock, waiting, for each lock key, after the slots rows and
-- before the buckets and the count of running jobs, so the two paths never admit a job of
-- one key at once. A job admitted and committed after reserve_keys' snapshot makes its
-- update fail on the index (a unique violation), and the broker runs the exact path then
-- too. reserve_keys may wait on the index for a transaction finishing the key's last job,
-- so a finish and a reserve sent together now commit one after the other.
--
-- Building the new indexes reads the whole table once, under a lock that holds writes.
--
-- Measured in-process (bench calls, 300 cycles of a reserve of 32): a lock reserve 1.27
-- times plain (1.63 before), a rate-limited one 1.28 (1.46 before), a plain reserve as
-- before.
CREATE UNIQUE INDEX jobs_lock_running ON jobs (limit_key)
    WHERE status = 'running' AND limit_n = 1;
-- ready jobs whose flow control only reserve_flow applies: rate keys, and limit keys that are
-- not lock keys
CREATE INDEX jobs_flow_exact ON jobs (queue, run_at)
    WHERE status IN ('scheduled', 'queued') AND park IS NULL AND limit_key IS NOT NULL
      AND (rate_key IS NOT NULL OR limit_n <> 1 OR limit_key NOT LIKE 'lock:%');

-- 0: no flow control in force in these queues (the plain reserve); 1: no key other than
-- lock keys and rate keys (not both on one job) among their ready jobs, and no job parked
-- but behind a limit key (the reserve statement admits them); 2: reserve_flow. Three
-- probes when nothing is paused or parked, as flow_in_force made before. The probes that
-- must find no row read an index whose every entry answers: queue by queue, in that
-- index's order, and sorting off (a generic plan made while the table had no statistics
-- read jobs_key_ready instead, every ready job with a limit key: 2 ms at 5,000).
CREATE FUNCTION flow_mode(p_queues text[], p_now double precision)
RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM paused_tasks) THEN
        RETURN 2;
    END IF;
    IF EXISTS (SELECT 1 FROM jobs AS p
               WHERE p.queue = ANY(p_queues) AND p.status IN ('scheduled', 'queued')
                 AND p.park IS NOT NULL) THEN
        -- parked for a paused task (resumed since), or for a token: reserve_flow brings
        -- them back
        IF EXISTS (SELECT 1 FROM jobs AS t WHERE t.status IN ('scheduled', 'queued')
                   AND t.park = 't' ORDER BY t.task LIMIT 1)
           OR EXISTS (SELECT 1 FROM unnest(p_queues) AS q(name)
                      CROSS JOIN LATERAL (
                          SELECT 1 FROM jobs AS r
                          WHERE r.queue = q.name AND r.status IN ('scheduled', 'queued')
                            AND r.park = 'r'
                          ORDER BY r.park_due LIMIT 1) AS r) THEN
            RETURN 2;
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM jobs AS f
                      WHERE f.queue = ANY(p_queues) AND f.status IN ('scheduled', 'queued')
                        AND f.park IS NULL
                        AND (f.limit_key IS NOT NULL OR f.rate_key IS NOT NULL)
                        AND (f.status = 'queued' OR f.run_at <= p_now)) THEN
        RETURN 0;
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_queues) AS q(name)
               CROSS JOIN LATERAL (
                   SELECT 1 FROM jobs AS f
                   WHERE f.queue = q.name AND f.status IN ('scheduled', 'queued')
                     AND f.park IS NULL AND f.limit_key IS NOT NULL
                     AND (f.rate_key IS NOT NULL OR f.limit_n <> 1
                          OR f.limit_key NOT LIKE 'lock:%')
                     AND (f.status = 'queued' OR f.run_at <= p_now)
                   ORDER BY f.run_at LIMIT 1) AS f) THEN
        RETURN 2;
    END IF;
    RETURN 1;
END
$$;
-- The jobs of rate keys (their ids, in reserve order) that their buckets pay for now, their
-- tokens taken. Each key's rate and burst are its first job's; its bucket is locked in key
-- order and read in its latest version, as reserve_flow reads it (both compute tokens =
-- min(burst, tokens + elapsed * rate) and the time it is full again: a change to one is a
-- change to the other). A key without a bucket row pays for nothing here (reserve_flow
-- makes the row).
CREATE FUNCTION take_tokens(p_ids text[], p_now double precision)
RETURNS SETOF text
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    WITH rated AS MATERIALIZED (
        SELECT j.id, j.rate_key AS key, j.rate_per_second AS rate, j.rate_burst AS burst,
               row_number() OVER (PARTITION BY j.rate_key ORDER BY c.ord) AS rn,
               count(*) OVER (PARTITION BY j.rate_key) AS n
        FROM unnest(p_ids) WITH ORDINALITY AS c(id, ord)
        CROSS JOIN LATERAL (SELECT j.id, j.rate_key, j.rate_per_second, j.rate_burst
                            FROM jobs AS j WHERE j.id = c.id) AS j
    ), bucket AS MATERIALIZED (
        -- each key's row by its primary key, in a nested loop over the sorted keys (as a
        -- semi-join the planner read every bucket: 230 ms with 50,000 keys)
        SELECT b.key, r.n, r.rate, r.burst,
               least(r.burst, b.tokens + (p_now - b.updated_at) * r.rate) AS avail
        FROM (SELECT DISTINCT r.key FROM rated AS r ORDER BY 1) AS u
        CROSS JOIN LATERAL (SELECT t.key, t.tokens, t.updated_at FROM buckets AS t
                            WHERE t.key = u.key FOR UPDATE) AS b
        JOIN rated AS r ON r.key = b.key AND r.rn = 1
    ), spent AS (
        UPDATE buckets AS b
        SET tokens = k.avail - least(k.n, floor(k.avail)), updated_at = p_now,
            full_at = p_now + (k.burst - (k.avail - least(k.n, floor(k.avail)))) / k.rate
        FROM bucket AS k
        WHERE b.key = k.key AND k.avail >= 1
    )
    SELECT r.id FROM rated AS r JOIN bucket AS k ON k.key = r.key
    WHERE r.rn <= floor(k.avail);
END
$$;

-- (flow_in_force stays: the reserve statement of a worker not yet upgraded calls it, and
-- then reserve_flow, which waits for the lock keys' advisory locks as the new one does.)

-- reserve when other flow control is in force: as in version 10, waiting for the advisory
-- lock of each lock key before counting its running jobs (step 3).
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
    k_ids text[]; k_task text[]; k_lk text[]; k_ln integer[]; k_rk text[];
    k_rate double precision[]; k_burst double precision[];
    s_keys text[]; s_tok double precision[]; s_at double precision[];
    p_tasks text[] := ARRAY[]::text[]; f_keys text[] := ARRAY[]::text[];
    x_keys text[] := ARRAY[]::text[]; x_rate double precision[] := ARRAY[]::double precision[];
    x_burst double precision[] := ARRAY[]::double precision[];
    u_lk text[] := ARRAY[]::text[]; u_ln integer[] := ARRAY[]::integer[];
    u_rk text[] := ARRAY[]::text[]; u_rn integer[] := ARRAY[]::integer[];
    fit integer[] := ARRAY[]::integer[];
    avail double precision; fits boolean; rate_due boolean;
BEGIN
    -- the running jobs per limit key, the paused tasks, and whether parked jobs of an
    -- empty bucket are due (queue by queue, in due order: the generic plan of a test of
    -- all the queues at once scanned jobs), in one statement
    SELECT COALESCE(array_agg(r.key), ARRAY[]::text[]), COALESCE(array_agg(r.n), ARRAY[]::bigint[]),
           COALESCE(array_agg(r.key) FILTER (WHERE r.n >= r.lim), ARRAY[]::text[]),
           (SELECT COALESCE(array_agg(t.task), ARRAY[]::text[]) FROM paused_tasks AS t),
           EXISTS (SELECT 1 FROM unnest(p_queues) AS q(name)
                   CROSS JOIN LATERAL (
                       SELECT d.park_due FROM jobs AS d
                       WHERE d.queue = q.name AND d.park = 'r'
                         AND d.status IN ('scheduled', 'queued')
                       ORDER BY d.park_due LIMIT 1) AS d
                   WHERE d.park_due <= p_now)
    INTO r_keys, r_n, r_full, paused, rate_due
    FROM (SELECT j.limit_key AS key, count(*) AS n, min(j.limit_n) AS lim FROM jobs AS j
          WHERE j.status = 'running' AND j.limit_key IS NOT NULL
          GROUP BY j.limit_key) AS r;

    -- 0. bring back the parked jobs of these queues whose token is due
    IF rate_due THEN
        UPDATE jobs SET park = NULL, park_due = NULL
        WHERE id IN (SELECT d.id FROM unnest(p_queues) AS q(name)
                     CROSS JOIN LATERAL (
                         SELECT d.id FROM jobs AS d
                         WHERE d.queue = q.name AND d.park = 'r'
                           AND d.status IN ('scheduled', 'queued') AND d.park_due <= p_now
                         ORDER BY d.park_due LIMIT 1000
                         FOR UPDATE SKIP LOCKED) AS d);
    END IF;

    -- 1. tentative picks. The candidates are the first p_limit + 64 waiting jobs of the
    --    unpaused queues, in reserve order, read once into arrays. One pass over them, in
    --    that order, sorts them out: jobs of paused tasks (their tasks noted as
    --    head_paused), of keys full in this snapshot (keys noted as head_full), of empty
    --    buckets (keys noted as e_keys), and the rest, ranked per limit key and per rate
    --    key; a job fits when its rank is within its key's free slots and its bucket's
    --    tokens in this snapshot (the window ranks of version 3, without their sorts).
    --    The first p_limit * 2 + 16 that fit are joined to jobs and locked (SKIP LOCKED),
    --    p_limit of them at most: twice the batch leaves room for the rows a concurrent
    --    reserve has locked.
    -- (array_agg takes the rows in the order the subquery gives them)
    SELECT array_agg(c.id), array_agg(c.task), array_agg(c.limit_key), array_agg(c.limit_n),
           array_agg(c.rate_key), array_agg(c.rate_per_second), array_agg(c.rate_burst)
    INTO k_ids, k_task, k_lk, k_ln, k_rk, k_rate, k_burst
    FROM (SELECT c.*
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
          ORDER BY q.pos, c.priority DESC, c.run_at, c.id) AS c;
    IF k_ids IS NULL THEN
        PERFORM unpark_free_keys(64, '');
        PERFORM unpark_resumed_tasks(64);
        RETURN;
    END IF;
    -- the buckets of the candidates' rate keys, as they are in this snapshot
    IF array_remove(k_rk, NULL) <> ARRAY[]::text[] THEN
        SELECT array_agg(e.key), array_agg(e.tokens), array_agg(e.updated_at)
        INTO s_keys, s_tok, s_at
        FROM (SELECT DISTINCT u.key FROM unnest(k_rk) AS u(key) WHERE u.key IS NOT NULL) AS u
        CROSS JOIN LATERAL (SELECT t.key, t.tokens, t.updated_at FROM buckets AS t
                            WHERE t.key = u.key) AS e;
    END IF;
    FOR i IN 1 .. cardinality(k_ids) LOOP
        IF k_task[i] = ANY(paused) THEN
            IF NOT k_task[i] = ANY(p_tasks) THEN
                p_tasks := p_tasks || k_task[i];
            END IF;
            CONTINUE;
        END IF;
        IF k_lk[i] = ANY(r_full) THEN
            IF NOT k_lk[i] = ANY(f_keys) THEN
                f_keys := f_keys || k_lk[i];
            END IF;
            CONTINUE;
        END IF;
        avail := k_burst[i];
        IF k_rk[i] IS NOT NULL THEN
            b := array_position(s_keys, k_rk[i]);
            IF b IS NOT NULL THEN
                avail := s_tok[b] + (p_now - s_at[b]) * k_rate[i];
                IF avail < 1 THEN
                    IF NOT k_rk[i] = ANY(x_keys) THEN
                        x_keys := x_keys || k_rk[i];
                        x_rate := x_rate || k_rate[i];
                        x_burst := x_burst || k_burst[i];
                    END IF;
                    CONTINUE;
                END IF;
                avail := least(k_burst[i], avail);
            END IF;
        END IF;
        fits := true;
        IF k_lk[i] IS NOT NULL THEN
            k := array_position(u_lk, k_lk[i]);
            IF k IS NULL THEN
                u_lk := u_lk || k_lk[i];
                u_ln := u_ln || 1;
                k := cardinality(u_lk);
            ELSE
                u_ln[k] := u_ln[k] + 1;
            END IF;
            fits := u_ln[k] <= k_ln[i] - COALESCE(r_n[array_position(r_keys, k_lk[i])], 0);
        END IF;
        IF k_rk[i] IS NOT NULL THEN
            k := array_position(u_rk, k_rk[i]);
            IF k IS NULL THEN
                u_rk := u_rk || k_rk[i];
                u_rn := u_rn || 1;
                k := cardinality(u_rk);
            ELSE
                u_rn[k] := u_rn[k] + 1;
            END IF;
            fits := fits AND u_rn[k] <= avail;
        END IF;
        IF fits AND cardinality(fit) < p_limit * 2 + 16 THEN
            fit := fit || i;
        END IF;
    END LOOP;
    IF p_tasks <> ARRAY[]::text[] THEN
        head_paused := p_tasks;
    END IF;
    IF f_keys <> ARRAY[]::text[] THEN
        head_full := f_keys;
    END IF;
    IF x_keys <> ARRAY[]::text[] THEN  -- in key order, as version 3 had them
        SELECT array_agg(x.key ORDER BY x.key), array_agg(x.rate ORDER BY x.key),
               array_agg(x.burst ORDER BY x.key)
        INTO e_keys, e_rate, e_burst
        FROM unnest(x_keys, x_rate, x_burst) AS x(key, rate, burst);
    END IF;
    IF fit <> ARRAY[]::integer[] THEN
        SELECT array_agg(k_ids[p.i]), array_agg(k_lk[p.i]), array_agg(k_ln[p.i]),
               array_agg(k_rk[p.i]), array_agg(k_rate[p.i]), array_agg(k_burst[p.i])
        INTO c_ids, c_lk, c_ln, c_rk, c_rate, c_burst
        FROM (SELECT f.i FROM unnest(fit) WITH ORDINALITY AS f(i, ord)
              JOIN jobs AS j ON j.id = k_ids[f.i]
              WHERE j.status IN ('scheduled', 'queued')
              ORDER BY f.ord
              LIMIT p_limit
              FOR UPDATE OF j SKIP LOCKED) AS p;
    END IF;
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
    --    (each statement only when there are such keys: one statement fewer each)
    IF array_remove(c_lk || head_full, NULL) <> ARRAY[]::text[] THEN
        SELECT array_agg(key ORDER BY key) INTO l_keys FROM (
            SELECT s.key
            FROM (SELECT DISTINCT u.key FROM unnest(c_lk || head_full) AS u(key)
                  WHERE u.key IS NOT NULL ORDER BY u.key) AS u
            CROSS JOIN LATERAL (SELECT t.key FROM slots AS t
                                WHERE t.key = u.key FOR UPDATE) AS s
        ) AS locked;
        -- A lock key is admitted by the reserve statement too, without its slots row: that
        -- admission holds the key's advisory lock until it commits, so wait for it here
        -- (key order), before the buckets (which that statement may wait for) and before
        -- counting.
        PERFORM pg_advisory_xact_lock(hashtextextended(current_schema() || '/' || x.key, 0))
        FROM unnest(l_keys) AS x(key)
        WHERE x.key LIKE 'lock:%'
        ORDER BY x.key;
    END IF;
    IF array_remove(c_rk || e_keys, NULL) <> ARRAY[]::text[] THEN
        SELECT array_agg(key ORDER BY key), array_agg(tokens ORDER BY key),
               array_agg(updated_at ORDER BY key)
        INTO b_keys, b_tok, b_at FROM (
            SELECT e.key, e.tokens, e.updated_at
            FROM (SELECT DISTINCT u.key FROM unnest(c_rk || e_keys) AS u(key)
                  WHERE u.key IS NOT NULL ORDER BY u.key) AS u
            CROSS JOIN LATERAL (SELECT t.key, t.tokens, t.updated_at FROM buckets AS t
                                WHERE t.key = u.key FOR UPDATE) AS e
        ) AS locked;
    END IF;

    -- 3. exact counts (a new snapshot), then admit in order
    IF l_keys IS NOT NULL THEN
        SELECT array_agg(COALESCE(r.n, 0) ORDER BY x.key) INTO l_run
        FROM unnest(l_keys) AS x(key)
        LEFT JOIN (SELECT j.limit_key, count(*) AS n FROM jobs AS j
                   WHERE j.status = 'running' AND j.limit_key = ANY(l_keys)
                   GROUP BY j.limit_key) AS r ON r.limit_key = x.key;
    END IF;
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
    IF NOT array_remove(c_lk, NULL) <@ COALESCE(l_keys, ARRAY[]::text[]) THEN
        INSERT INTO slots (key)
        SELECT DISTINCT x FROM unnest(c_lk) AS x
        WHERE x IS NOT NULL AND NOT x = ANY(COALESCE(l_keys, ARRAY[]::text[]))
        ON CONFLICT DO NOTHING;
    END IF;
    IF NOT array_remove(c_rk, NULL) <@ COALESCE(b_keys, ARRAY[]::text[]) THEN
        INSERT INTO buckets (key, tokens, updated_at, full_at)
        SELECT x.key, max(x.burst), p_now, p_now FROM unnest(c_rk, c_burst) AS x(key, burst)
        WHERE x.key IS NOT NULL AND NOT x.key = ANY(COALESCE(b_keys, ARRAY[]::text[]))
        GROUP BY x.key
        ON CONFLICT DO NOTHING;
    END IF;

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
