-- chervil PostgreSQL schema, version 4: reserve_flow reads running jobs by index scans.
--
-- reserve_flow counts the running jobs of each limit key through the partial index
-- jobs_running (status = 'running'). Every job passes through running, so that index keeps
-- an entry for each job that ran since the last vacuum; only a plain index scan marks the
-- entries of finished jobs dead as it meets them (a bitmap scan never does). The planner
-- chose bitmap scans: in a drain of 20,000 jobs each count read 14,000 entries and 900
-- heap pages to find 8 running jobs (1.3 ms, twice per reserve).
ALTER FUNCTION reserve_flow(text[], integer, text, double precision, text, double precision)
    SET enable_bitmapscan = off;
