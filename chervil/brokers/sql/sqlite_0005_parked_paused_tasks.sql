-- chervil SQLite schema, version 5: jobs of a paused task are parked as well.
--
-- Before, reserve stepped over every job of a paused task at each call (6 ms with 20,000
-- of them ahead of the rest of the queue, and growing). Now reserve parks them (park = 't')
-- as it meets them among its candidates, and resuming the task brings them all back in the
-- same transaction (writers take turns: no parking can slip in between).
CREATE INDEX chervil_jobs_task_parked ON chervil_jobs (task)
    WHERE status = 'queued' AND park = 't';
