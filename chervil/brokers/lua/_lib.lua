-- Shared helpers: redis_scripts.py prepends this file to every other script before
-- loading it, so each script stays one EVALSHA. Nothing here touches a key by itself.
--
-- Key layout (all keys of one queue share the hash tag {<queue>}, so one script touches
-- one Redis Cluster slot; <base> below is "<prefix>:{<queue>}"):
--   <base>:j:<id>        hash   the job record (one per job)
--   <base>:ready         zset   queued jobs; score -priority, member <run_at µs, 17 digits><id>
--   <base>:age           zset   the queued jobs not in ready at score 0: parked ones and
--                               those of a priority other than 0; score run_at. With the
--                               head of ready's score-0 band, the oldest queued job
--                               (stats.lua); a plain job costs no write here
--   <base>:sched         zset   scheduled jobs; score run_at
--   <base>:run           zset   running jobs; score lease_until
--   <base>:fin:<status>  zset   succeeded / dead / cancelled jobs; score finished_at
--   <base>:ids:<status>  zset   every job by status but running (<base>:run lists those);
--                               score 0, member id (ZRANGEBYLEX paging)
--   <base>:uniq          hash   unique_key -> id of the job holding it
--   <base>:uniqw         hash   unique_key -> held until (unique_mode window)
--   <base>:uniqx         zset   the same window keys; score held until (prune)
--   <base>:paused        string present while the queue is paused
-- Flow control (all per queue: a limit or rate key shared by two queues is two keys):
--   <base>:slots         hash   limit_key -> running jobs holding a slot
--   <base>:lrc           hash   limit_key -> jobs of that key in <base>:ready
--   <base>:lpark:<key>   zset   jobs waiting for a slot of limit_key <key> (ready's
--                               score and member, so they come back in order)
--   <base>:tb            hash   rate_key -> "<tokens> <updated_at>" (token bucket)
--   <base>:tbfull        zset   rate_key -> when its bucket is full again (prune)
--   <base>:rpark:<key>   zset   jobs waiting for a token of rate_key <key>
--   <base>:rdue          zset   rate_key -> when its parked jobs are looked at again
--   <base>:tpark:<task>  zset   jobs of a paused task type
-- A parked job stays status "queued" (in ids:queued and age, not in ready); its record
-- field `park` says which park ('l', 'r' or 't') holds it.
-- Global keys share the tag {_}: <prefix>:{_}:queues (set), <prefix>:{_}:wake:<queue>
-- (list of wake-up tokens), workers, named leases, schedule marks and ptasks (set of
-- paused task types).
--
-- Numbers written back to Redis always go through fmt() (%.17g): Lua's own number to
-- string conversion keeps only 14 digits and would round timestamps.

local function fmt(x) return string.format('%.17g', x) end

-- now: the caller's clock (tests inject one) or, when empty, Redis's own TIME.
local NOW_S = '0'  -- the script's now (set by clock())
local function clock(arg)
  if arg == '' then
    local t = redis.call('TIME')
    local n = tonumber(t[1]) + tonumber(t[2]) / 1000000
    NOW_S = fmt(n)
    return n, NOW_S
  end
  NOW_S = arg
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
    if redis.call('LPUSH', key, unpack(tokens)) > cap then
      redis.call('LTRIM', key, 0, cap - 1)
    end
  end
end

-- One command over many members (ZADD score member ..., ZREM member ...): one call
-- per 1,000 arguments, as unpack() has a stack limit. A member costs less this way than
-- in a call of its own (the per-call cost of redis.call is most of a ZADD's).
local function multi(cmd, key, args)
  for s = 1, #args, 1000 do
    redis.call(cmd, key, unpack(args, s, math.min(s + 999, #args)))
  end
end

local TERMINAL = {succeeded = true, dead = true, cancelled = true}
local LIVE = {scheduled = true, queued = true, running = true}

-- Flow control. Invariant for each limit key K: jobs of K in ready (lrc) plus running
-- jobs of K (slots) stay within limit_n, so reserve never meets a saturated key in
-- ready; the rest wait in lpark:K and come back one per freed slot (refill).
-- PTASK: paused task types, when the script knows them (reserve, standalone enqueue);
-- UNPARKED counts the jobs moved back to ready (the caller turns them into wake-ups).
local PTASK = {}
local UNPARKED = 0

local function hnum(key, field)
  return tonumber(redis.call('HGET', key, field) or '0')
end

local function hadd(key, field, n)
  if redis.call('HINCRBY', key, field, n) <= 0 then redis.call('HDEL', key, field) end
end

local PARK_FIELD = {l = 'limit_key', r = 'rate_key', t = 'task'}

-- run_at in seconds of a member of ready or of a park
local function member_run_at(member) return tonumber(string.sub(member, 1, 17)) / 1000000 end

-- due (rate parks): when a token is due; an existing rdue entry is kept.
local function park(base, h, kind, name, score, member, due)
  redis.call('ZADD', base .. ':' .. kind .. 'park:' .. name, score, member)
  redis.call('ZADD', base .. ':age', fmt(member_run_at(member)), string.sub(member, 18))
  redis.call('HSET', h, 'park', kind)
  if kind == 'r' then redis.call('ZADD', base .. ':rdue', 'NX', due or NOW_S, name) end
end

-- Move parked jobs of limit key lk back to ready while a slot is free for them: as
-- many as the key has room for (its limit read from the first parked job's record), at
-- most 64 per call, in one ZRANGE, one ZREM, one ZADD and one HINCRBY plus an HDEL each.
local function refill(base, lk)
  local pk = base .. ':lpark:' .. lk
  local head = redis.call('ZRANGE', pk, 0, 0)
  if not head[1] then return end
  local n = tonumber(redis.call('HGET', base .. ':j:' .. string.sub(head[1], 18), 'limit_n')
                     or '1')
  local room = math.min(64, n - hnum(base .. ':slots', lk) - hnum(base .. ':lrc', lk))
  if room <= 0 then return end
  local ms = redis.call('ZRANGE', pk, 0, room - 1, 'WITHSCORES')
  local members, scored, plain = {}, {}, {}
  for k = 1, #ms, 2 do
    local id = string.sub(ms[k], 18)
    redis.call('HDEL', base .. ':j:' .. id, 'park')
    members[#members + 1] = ms[k]
    scored[#scored + 1] = ms[k + 1]
    scored[#scored + 1] = ms[k]
    if tonumber(ms[k + 1]) == 0 then plain[#plain + 1] = id end  -- leaves age (priority 0)
  end
  redis.call('ZREM', pk, unpack(members))
  redis.call('ZADD', base .. ':ready', unpack(scored))
  if plain[1] then redis.call('ZREM', base .. ':age', unpack(plain)) end
  redis.call('HINCRBY', base .. ':lrc', lk, #members)
  UNPARKED = UNPARKED + #members
end

-- Keys whose slots freed while a script defers its refills (finish: one refill per key
-- for a whole batch, not one per job); nil while not deferring.
local FREED = nil

-- A job takes / gives back a slot of its limit key.
local function take_slot(base, lk)
  redis.call('HINCRBY', base .. ':slots', lk, 1)
  hadd(base .. ':lrc', lk, -1)
end

local function free_slot(base, lk)
  hadd(base .. ':slots', lk, -1)
  if FREED then FREED[lk] = true else refill(base, lk) end
end

-- The fields place() needs (f.prio, f.lk, f.ln, f.rk, f.task).
local function flow_fields(h)
  local v = redis.call('HMGET', h, 'priority', 'limit_key', 'limit_n', 'rate_key', 'task')
  return {prio = tonumber(v[1] or '0'), lk = v[2], ln = tonumber(v[3] or '1'), rk = v[4],
          task = v[5]}
end

-- A queued job goes to ready, or to a park: its task is paused, jobs of its rate key
-- already wait for tokens, or its limit key has no room (lpark non-empty, or running
-- plus ready jobs of the key at limit_n). skip: a park kind not to check (the one the
-- job comes from, so it is in age: it leaves age if it goes to ready at priority 0).
local function place(base, id, h, f, run_at_s, skip)
  local member, score = rkey(tonumber(run_at_s), id), fmt(0 - f.prio)
  if f.task and PTASK[f.task] and skip ~= 't' then
    return park(base, h, 't', f.task, score, member)
  end
  if f.rk and skip ~= 'r' and redis.call('EXISTS', base .. ':rpark:' .. f.rk) == 1 then
    return park(base, h, 'r', f.rk, score, member)
  end
  if f.lk then
    if redis.call('EXISTS', base .. ':lpark:' .. f.lk) == 1
        or hnum(base .. ':slots', f.lk) + hnum(base .. ':lrc', f.lk) >= f.ln then
      return park(base, h, 'l', f.lk, score, member)
    end
    redis.call('HINCRBY', base .. ':lrc', f.lk, 1)
  end
  redis.call('ZADD', base .. ':ready', score, member)
  if f.prio ~= 0 then redis.call('ZADD', base .. ':age', run_at_s, id)
  elseif skip then redis.call('ZREM', base .. ':age', id) end
end

-- Take job id out of the indexes of its status st. lk (running only): its limit key
-- if the caller read it (false: none), else it is read here.
local function leave(base, id, st, h, lk)
  if st ~= 'running' then redis.call('ZREM', base .. ':ids:' .. st, id) end
  if st == 'queued' then
    local v = redis.call('HMGET', h, 'run_at', 'park', 'limit_key', 'rate_key', 'task')
    local m = rkey(tonumber(v[1]), id)
    if v[2] then
      local name = v[({l = 3, r = 4, t = 5})[v[2]]]
      redis.call('ZREM', base .. ':' .. v[2] .. 'park:' .. name, m)
      redis.call('HDEL', h, 'park')
    else
      redis.call('ZREM', base .. ':ready', m)
      if v[3] then
        hadd(base .. ':lrc', v[3], -1)
        refill(base, v[3])
      end
    end
    redis.call('ZREM', base .. ':age', id)
  elseif st == 'scheduled' then
    redis.call('ZREM', base .. ':sched', id)
  elseif st == 'running' then
    redis.call('ZREM', base .. ':run', id)
    if lk == nil then lk = redis.call('HGET', h, 'limit_key') end
    if lk then free_slot(base, lk) end
  else
    redis.call('ZREM', base .. ':fin:' .. st, id)
    redis.call('PERSIST', h)
  end
end

-- Put job id into the indexes of status st. score_s is run_at (queued, scheduled),
-- lease_until (running) or finished_at (terminal), as a string. ttl: seconds a terminal
-- record lives (EXPIRE), 0 = until pruned. f: the job's flow fields if the caller
-- knows them (queued; else read from the record).
local function index(base, id, st, h, score_s, ttl, f)
  if st ~= 'running' then redis.call('ZADD', base .. ':ids:' .. st, 0, id) end
  if st == 'queued' then
    place(base, id, h, f or flow_fields(h), score_s)
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

-- Token bucket of rate key rk at now: tokens (a new bucket starts full).
local function bucket(base, rk, now, rate, burst)
  local v = redis.call('HGET', base .. ':tb', rk)
  if not v then return burst end
  local t, u = string.match(v, '^(%S+) (%S+)$')
  return math.min(burst, tonumber(t) + math.max(0, now - tonumber(u)) * rate)
end

-- Rate key rk is due: move as many parked jobs back as there are tokens (at least
-- one), and look again when the next token after those is due if jobs remain.
local function unpark_rate(base, rk, now)
  local pk = base .. ':rpark:' .. rk
  local head = redis.call('ZRANGE', pk, 0, 0)
  if not head[1] then return end
  local rb = redis.call('HMGET', base .. ':j:' .. string.sub(head[1], 18), 'rate', 'burst')
  local rate, burst = tonumber(rb[1] or '1'), tonumber(rb[2] or '1')
  local tokens = bucket(base, rk, now, rate, burst)
  if tokens < 1 then
    redis.call('ZADD', base .. ':rdue', fmt(now + (1 - tokens) / rate), rk)
    return
  end
  local k = math.floor(tokens)
  local ms = redis.call('ZRANGE', pk, 0, k - 1)
  for _, m in ipairs(ms) do
    local id = string.sub(m, 18)
    local h = base .. ':j:' .. id
    redis.call('ZREM', pk, m)
    redis.call('HDEL', h, 'park')
    place(base, id, h, flow_fields(h), redis.call('HGET', h, 'run_at'), 'r')
    UNPARKED = UNPARKED + 1
  end
  if redis.call('EXISTS', pk) == 1 then
    redis.call('ZADD', base .. ':rdue', fmt(now + (k + 1 - tokens) / rate), rk)
  end
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
    local held = until_s ~= '' and until_s or '0'
    redis.call('HSET', base .. ':uniqw', uk, held)
    redis.call('ZADD', base .. ':uniqx', held, uk)
  elseif redis.call('HDEL', base .. ':uniqw', uk) == 1 then
    redis.call('ZREM', base .. ':uniqx', uk)
  end
end

-- A job leaving the live states gives its unique key back (a window key is kept).
-- uk: the record's unique_key if the caller read it (false: none), else read here.
local function free_unique(base, id, h, uk)
  if uk == nil then uk = redis.call('HGET', h, 'unique_key') end
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

-- Before a script adds a scheduled job: head is the first run_at before its additions
-- (read once per queue, only by scripts that schedule something, false until read).
-- Returns the new head and whether run_at comes first (waiters must recompute how long
-- they may sleep).
local function new_first(base, head, run_at)
  if head == false then head = sched_head(base) or math.huge end
  if run_at < head then return run_at, true end
  return head, false
end

local function is_paused(base) return redis.call('EXISTS', base .. ':paused') == 1 end
