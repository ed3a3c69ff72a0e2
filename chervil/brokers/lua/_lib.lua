-- Shared helpers: redis_scripts.py prepends this file to every other script before
-- loading it, so each script stays one EVALSHA. Nothing here touches a key by itself.
--
-- Key layout (all keys of one queue share the hash tag {<queue>}, so one script touches
-- one Redis Cluster slot; <base> below is "<prefix>:{<queue>}"):
--   <base>:j:<id>        hash   the job record (one per job)
--   <base>:ready         zset   queued jobs; score -priority, member <run_at µs, 17 digits><id>
--   <base>:age           zset   queued jobs; score run_at (age of the oldest ready job)
--   <base>:sched         zset   scheduled jobs; score run_at
--   <base>:run           zset   running jobs; score lease_until
--   <base>:fin:<status>  zset   succeeded / dead / cancelled jobs; score finished_at
--   <base>:ids:<status>  zset   every job by status; score 0, member id (ZRANGEBYLEX paging)
--   <base>:uniq          hash   unique_key -> id of the job holding it
--   <base>:uniqw         hash   unique_key -> held until (unique_mode window)
--   <base>:paused        string present while the queue is paused
-- Global keys share the tag {_}: <prefix>:{_}:queues (set), <prefix>:{_}:wake:<queue>
-- (list of wake-up tokens), workers, named leases and schedule marks.
--
-- Numbers written back to Redis always go through fmt() (%.17g): Lua's own number to
-- string conversion keeps only 14 digits and would round timestamps.

local function fmt(x) return string.format('%.17g', x) end

-- now: the caller's clock (tests inject one) or, when empty, Redis's own TIME.
local function clock(arg)
  if arg == '' then
    local t = redis.call('TIME')
    local n = tonumber(t[1]) + tonumber(t[2]) / 1000000
    return n, fmt(n)
  end
  return tonumber(arg), arg
end

-- Member of <base>:ready: run_at in whole microseconds, fixed width, then the id, so
-- members of one priority sort by run_at then id.
local function rkey(run_at, id)
  local us = math.floor(run_at * 1000000)
  if us < 0 then us = 0 end
  return string.format('%017.0f', us) .. id
end

-- Push up to n wake-up tokens (the list never holds more than cap).
local function wake(key, n, cap)
  if key and n > 0 then
    local tokens = {}
    for i = 1, math.min(n, cap) do tokens[i] = '1' end
    redis.call('LPUSH', key, unpack(tokens))
    redis.call('LTRIM', key, 0, cap - 1)
  end
end

local TERMINAL = {succeeded = true, dead = true, cancelled = true}
local LIVE = {scheduled = true, queued = true, running = true}

-- Take job id out of the indexes of its status st.
local function leave(base, id, st, h)
  redis.call('ZREM', base .. ':ids:' .. st, id)
  if st == 'queued' then
    local run_at = tonumber(redis.call('HGET', h, 'run_at'))
    redis.call('ZREM', base .. ':ready', rkey(run_at, id))
    redis.call('ZREM', base .. ':age', id)
  elseif st == 'scheduled' then
    redis.call('ZREM', base .. ':sched', id)
  elseif st == 'running' then
    redis.call('ZREM', base .. ':run', id)
  else
    redis.call('ZREM', base .. ':fin:' .. st, id)
    redis.call('PERSIST', h)
  end
end

-- Put job id into the indexes of status st. score_s is run_at (queued, scheduled),
-- lease_until (running) or finished_at (terminal), as a string. ttl: seconds a terminal
-- record lives (EXPIRE), 0 = until pruned. prio: the job's priority if the caller knows
-- it (else read from the record).
local function index(base, id, st, h, score_s, ttl, prio)
  redis.call('ZADD', base .. ':ids:' .. st, 0, id)
  if st == 'queued' then
    prio = prio or tonumber(redis.call('HGET', h, 'priority') or '0')
    redis.call('ZADD', base .. ':ready', fmt(0 - prio), rkey(tonumber(score_s), id))
    redis.call('ZADD', base .. ':age', score_s, id)
  elseif st == 'scheduled' then
    redis.call('ZADD', base .. ':sched', score_s, id)
  elseif st == 'running' then
    redis.call('ZADD', base .. ':run', score_s, id)
  else
    redis.call('ZADD', base .. ':fin:' .. st, score_s, id)
    if ttl and ttl > 0 then redis.call('EXPIRE', h, ttl) end
  end
end

-- Set the status field of job id to st and index it there (see index()).
local function enter(base, id, st, h, score_s, ttl)
  redis.call('HSET', h, 'status', st)
  index(base, id, st, h, score_s, ttl)
end

-- Unique keys: <base>:uniq maps unique_key -> id of the job that took it; for
-- unique_mode "window" <base>:uniqw maps unique_key -> the time it is held until. Other
-- modes hold while the job is scheduled or queued ("queued"), or running too
-- ("active", the default, not stored on the record).
local function unique_holder(base, uk, now)
  local holder = redis.call('HGET', base .. ':uniq', uk)
  if not holder then return nil end
  local until_s = redis.call('HGET', base .. ':uniqw', uk)
  if until_s then
    if tonumber(until_s) > now then return holder end
    return nil
  end
  local h = base .. ':j:' .. holder
  local st = redis.call('HGET', h, 'status') or ''
  if st == 'scheduled' or st == 'queued' then return holder end
  if st == 'running' and not redis.call('HGET', h, 'unique_mode') then return holder end
  return nil
end

local function take_unique(base, uk, id, mode, until_s)
  redis.call('HSET', base .. ':uniq', uk, id)
  if mode == 'window' then
    redis.call('HSET', base .. ':uniqw', uk, until_s ~= '' and until_s or '0')
  else
    redis.call('HDEL', base .. ':uniqw', uk)
  end
end

-- A job leaving the live states gives its unique key back (a window key is kept).
local function free_unique(base, id, h)
  local uk = redis.call('HGET', h, 'unique_key')
  if uk and redis.call('HGET', base .. ':uniq', uk) == id
      and redis.call('HEXISTS', base .. ':uniqw', uk) == 0 then
    redis.call('HDEL', base .. ':uniq', uk)
  end
end

-- Run_at of the first scheduled job, or nil.
local function sched_head(base)
  local first = redis.call('ZRANGE', base .. ':sched', 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) end
  return nil
end

local function is_paused(base) return redis.call('EXISTS', base .. ':paused') == 1 end
