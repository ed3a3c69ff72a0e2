-- chervil SQLite schema, version 1.
-- chervil_jobs      one row per job: the single source of truth (DESIGN §2)
-- chervil_queues    paused flag per queue
-- chervil_workers   worker heartbeats
-- chervil_leases    named leases (scheduler leadership, locks)

CREATE TABLE chervil_jobs (
    id            TEXT PRIMARY KEY,
    task          TEXT NOT NULL,
    queue         TEXT NOT NULL,
    priority      INTEGER NOT NULL DEFAULT 0,
    payload       BLOB NOT NULL,
    status        TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL DEFAULT 1,
    lost_leases   INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    dead_reason   TEXT,
    created_at    REAL NOT NULL,
    run_at        REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    worker        TEXT,
    lease_until   REAL,
    lease_token   TEXT,
    unique_key    TEXT,
    task_version  TEXT,
    result        TEXT,
    trace         TEXT
);

-- reserve: ready jobs of one queue in priority order
CREATE INDEX chervil_jobs_ready ON chervil_jobs (queue, priority DESC, run_at, id)
    WHERE status = 'queued';
-- queue age: the oldest ready job per queue
CREATE INDEX chervil_jobs_age ON chervil_jobs (queue, run_at) WHERE status = 'queued';
-- promotion of due scheduled jobs, and the next wake-up time
CREATE INDEX chervil_jobs_scheduled ON chervil_jobs (run_at) WHERE status = 'scheduled';
-- recovery of expired leases
CREATE INDEX chervil_jobs_running ON chervil_jobs (lease_until) WHERE status = 'running';
-- one waiting-or-running job per unique key
CREATE UNIQUE INDEX chervil_jobs_unique ON chervil_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running');
-- listing and stats by status
CREATE INDEX chervil_jobs_status ON chervil_jobs (status, queue, task);
-- retention
CREATE INDEX chervil_jobs_finished ON chervil_jobs (status, finished_at)
    WHERE status IN ('succeeded', 'dead', 'cancelled');

CREATE TABLE chervil_queues (
    name    TEXT PRIMARY KEY,
    paused  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE chervil_workers (
    id       TEXT PRIMARY KEY,
    info     TEXT NOT NULL,
    seen_at  REAL NOT NULL
);

CREATE TABLE chervil_leases (
    name   TEXT PRIMARY KEY,
    owner  TEXT NOT NULL,
    until  REAL NOT NULL
);
