-- chervil PostgreSQL schema, version 9: the slots a statement frees are refilled once per
-- statement, not once per row.
--
-- A finish of a batch of limit-key jobs ran the row trigger jobs_slot_freed once per job:
-- a probe for parked jobs of its key and, when one was parked, an UPDATE of its own to
-- bring it back, which ran jobs_changed again (its NOTIFY and terminal counts). In a drain
-- of 20,000 concurrency=64 jobs that was 19,189 trigger calls and 5,850 nested statements:
-- 1.7 s of database time with jobs_changed. Now the statement trigger jobs_slots_freed
-- counts, per key, the jobs of the statement that stopped running (finished, dead,
-- cancelled, released, recovered), and brings back that many parked jobs of each key, in
-- the order the row trigger took them, in one UPDATE (1.2 s in the same drain). The
-- wake-up is unchanged: a NOTIFY of each queue that had a limit-key job stop running
-- (jobs held back behind the key may run now).
DROP TRIGGER jobs_slot_freed ON jobs;
DROP FUNCTION slot_freed();

CREATE FUNCTION slots_freed() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    f_keys text[];
    f_n bigint[];
BEGIN
    -- old_rows alone first: a statement of jobs without limit keys pays one scan of them
    IF NOT EXISTS (SELECT 1 FROM old_rows WHERE status = 'running' AND limit_key IS NOT NULL)
    THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(f.key ORDER BY f.key), array_agg(f.n ORDER BY f.key) INTO f_keys, f_n
    FROM (SELECT o.limit_key AS key, count(*) AS n
          FROM old_rows AS o JOIN new_rows AS w ON w.id = o.id
          WHERE o.status = 'running' AND o.limit_key IS NOT NULL AND w.status <> 'running'
          GROUP BY o.limit_key) AS f
    -- (tested first: an UPDATE, even of no row, runs the statement triggers of jobs)
    WHERE EXISTS (SELECT 1 FROM jobs AS p WHERE p.limit_key = f.key AND p.park = 'l'
                  AND p.status IN ('scheduled', 'queued'));
    IF f_keys IS NOT NULL THEN
        -- SKIP LOCKED: two statements freeing slots of one key bring back different jobs
        UPDATE jobs SET park = NULL
        WHERE id IN (SELECT p.id FROM unnest(f_keys, f_n) AS f(key, n)
                     CROSS JOIN LATERAL (
                         SELECT p.id FROM jobs AS p
                         WHERE p.limit_key = f.key AND p.park = 'l'
                           AND p.status IN ('scheduled', 'queued')
                         ORDER BY p.priority DESC, p.run_at, p.id
                         LIMIT f.n FOR UPDATE SKIP LOCKED) AS p);
    END IF;
    -- jobs held back behind these keys may run now (the jobs brought back are announced
    -- by jobs_changed as well)
    PERFORM pg_notify('chervil_' || TG_TABLE_SCHEMA, q.queue)
    FROM (SELECT DISTINCT w.queue FROM old_rows AS o JOIN new_rows AS w ON w.id = o.id
          WHERE o.status = 'running' AND o.limit_key IS NOT NULL
            AND w.status <> 'running') AS q;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_slots_freed AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION slots_freed();
