-- chervil SQLite schema, version 2: flow control and scheduling.
-- chervil_jobs gains the keys that reserve enforces:
--   limit_key / limit_n   at most limit_n running jobs per key (locks are limit_n = 1)
--   rate_key / rate_per_second / rate_burst   a token bucket per key
-- chervil_unique     one row per unique key: which job holds it, in which mode, until when
-- chervil_slots      running jobs per limit key
-- chervil_buckets    token buckets per rate key
-- chervil_paused_tasks   task types whose jobs are held
-- chervil_schedule_marks last fire time per cron schedule

ALTER TABLE chervil_jobs ADD COLUMN limit_key TEXT;
ALTER TABLE chervil_jobs ADD COLUMN limit_n INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chervil_jobs ADD COLUMN rate_key TEXT;
ALTER TABLE chervil_jobs ADD COLUMN rate_per_second REAL NOT NULL DEFAULT 0;
ALTER TABLE chervil_jobs ADD COLUMN rate_burst REAL NOT NULL DEFAULT 0;

DROP INDEX chervil_jobs_unique;

CREATE TABLE chervil_unique (
    key     TEXT PRIMARY KEY,
    job_id  TEXT NOT NULL,
    mode    TEXT NOT NULL,          -- queued | active | window
    until   REAL                    -- window mode: held until this time
);

CREATE TABLE chervil_slots (
    key      TEXT PRIMARY KEY,
    running  INTEGER NOT NULL,
    max      INTEGER NOT NULL
);

CREATE TABLE chervil_buckets (
    key         TEXT PRIMARY KEY,
    tokens      REAL NOT NULL,
    updated_at  REAL NOT NULL,
    rate        REAL NOT NULL,
    burst       REAL NOT NULL
);

CREATE TABLE chervil_paused_tasks (
    task  TEXT PRIMARY KEY
);

CREATE TABLE chervil_schedule_marks (
    name     TEXT PRIMARY KEY,
    fire_at  REAL NOT NULL
);

-- A job entering "running" takes a slot of its limit key; leaving it frees the slot.
-- (Triggers keep the count right for every verb: reserve, finish, release, recover.)
CREATE TRIGGER chervil_slot_take AFTER UPDATE OF status ON chervil_jobs
WHEN NEW.status = 'running' AND OLD.status != 'running' AND NEW.limit_key IS NOT NULL
BEGIN
    INSERT INTO chervil_slots (key, running, max) VALUES (NEW.limit_key, 1, NEW.limit_n)
    ON CONFLICT (key) DO UPDATE SET running = running + 1, max = excluded.max;
END;

CREATE TRIGGER chervil_slot_free AFTER UPDATE OF status ON chervil_jobs
WHEN OLD.status = 'running' AND NEW.status != 'running' AND OLD.limit_key IS NOT NULL
BEGIN
    UPDATE chervil_slots SET running = MAX(running - 1, 0) WHERE key = OLD.limit_key;
END;

-- Whether a queue has ready jobs under flow control at all (reserve's fast-path check).
CREATE INDEX chervil_jobs_flow ON chervil_jobs (queue)
    WHERE status = 'queued' AND (limit_key IS NOT NULL OR rate_key IS NOT NULL);
