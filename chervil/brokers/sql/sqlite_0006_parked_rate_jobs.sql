-- chervil SQLite schema, version 6: jobs held back by an empty token bucket are parked
-- until their token is due.
--
-- Before, reserve stepped over every job of an empty bucket at each call (6.9 ms with
-- 20,000 jobs of a "1/m" task ahead of the rest of the queue, and growing). Now reserve
-- parks the jobs of an empty bucket it meets among its candidates (park = 'r'), each with
-- the time its token is due (park_due): the n-th job in line when the bucket will have n
-- tokens, and not before n / rate after the key's last parked job, so the jobs of a key
-- come back one token apart, in order. Reserve brings back the due ones first (as it
-- promotes due scheduled jobs), and the next wake-up counts them.
ALTER TABLE chervil_jobs ADD COLUMN park_due REAL;

-- bringing back the due ones, and the next wake-up
CREATE INDEX chervil_jobs_rate_due ON chervil_jobs (park_due)
    WHERE status = 'queued' AND park = 'r';
-- a key's last parked job
CREATE INDEX chervil_jobs_rate_parked ON chervil_jobs (rate_key, park_due)
    WHERE status = 'queued' AND park = 'r';
-- parking: a key's ready jobs from its head
CREATE INDEX chervil_jobs_rate_waiting ON chervil_jobs (rate_key, priority DESC, run_at, id)
    WHERE status = 'queued' AND park IS NULL AND rate_key IS NOT NULL;
