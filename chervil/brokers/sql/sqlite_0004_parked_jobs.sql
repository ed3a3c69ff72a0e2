-- chervil SQLite schema, version 4: jobs waiting for a full limit key are parked.
--
-- Before, a job whose limit key was full stayed in chervil_jobs_ready and every reserve
-- stepped over it: with 20,000 jobs queued behind one lock, each reserve read all 20,000
-- (7 ms). Now reserve parks the jobs of a full key it meets among its candidates (park =
-- 'l': still queued, out of chervil_jobs_ready), and a job of a limit key that stops
-- running brings back the first parked job of its key (chervil_slot_freed). Writers take
-- turns in SQLite, so a slot never frees unseen between the count and the parking.
ALTER TABLE chervil_jobs ADD COLUMN park TEXT;

DROP INDEX chervil_jobs_ready;
CREATE INDEX chervil_jobs_ready ON chervil_jobs (queue, priority DESC, run_at, id)
    WHERE status = 'queued' AND park IS NULL;
DROP INDEX chervil_jobs_flow;
CREATE INDEX chervil_jobs_flow ON chervil_jobs (queue)
    WHERE status = 'queued' AND park IS NULL AND (limit_key IS NOT NULL OR rate_key IS NOT NULL);
-- parking (a key's ready jobs from its head) and bringing back (its parked ones, in order)
CREATE INDEX chervil_jobs_key_waiting ON chervil_jobs
    (limit_key, park, priority DESC, run_at, id)
    WHERE status = 'queued' AND limit_key IS NOT NULL;

CREATE TRIGGER chervil_slot_freed AFTER UPDATE OF status ON chervil_jobs
WHEN OLD.status = 'running' AND OLD.limit_key IS NOT NULL AND NEW.status != 'running'
BEGIN
    UPDATE chervil_jobs SET park = NULL
    WHERE id = (SELECT p.id FROM chervil_jobs AS p INDEXED BY chervil_jobs_key_waiting
                WHERE p.status = 'queued' AND p.limit_key = OLD.limit_key AND p.park = 'l'
                ORDER BY p.priority DESC, p.run_at, p.id LIMIT 1);
END;
