-- chervil SQLite schema, version 3: running jobs per limit key are counted from the
-- jobs themselves (a partial index of running keyed jobs) instead of kept in
-- chervil_slots by triggers, which cost a row upsert on every reserve and finish.

DROP TRIGGER chervil_slot_take;
DROP TRIGGER chervil_slot_free;
DROP TABLE chervil_slots;

CREATE INDEX chervil_jobs_limits ON chervil_jobs (limit_key)
    WHERE status = 'running' AND limit_key IS NOT NULL;
