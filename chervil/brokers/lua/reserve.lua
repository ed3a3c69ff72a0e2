-- reserve: lease up to `limit` ready jobs, queues in the order given (strict priority),
-- inside a queue by priority, run_at, id. Due scheduled jobs are promoted first, at
-- most `promote max` per queue per call (the rest on later calls), so a call costs
-- O(log n) whatever the backlog. Paused queues are promoted but not taken from.
--
-- Flow control (keys in _lib.lua, all under the queue's tag). Held-back jobs are parked,
-- not scanned again: each is moved out of ready once (no attempt spent) and comes back
-- when it may run.
--   limit keys: enqueue and every other way into "queued" park a job whose key has no
--     room (place()), so a saturated key is normally never met here; a job that still
--     finds its key full (limit_n changed) is parked in lpark:<key>. Taking a job takes
--     a slot; leaving running (finish, release, recover) frees it and refills one.
--   rate keys: a job whose bucket has no token is parked in rpark:<key>, and <key> is
--     put in rdue at the time a token is due; due keys are looked at here (at most
--     `promote max` per call), moving back as many jobs as there are tokens.
--   paused task types: parked in tpark:<task> until resumed (unpause.lua).
-- A call parks at most 4 * limit + 64 jobs, plus the rest of the batch it is looking at
-- (then it stops and passes a wake-up on), so
-- its cost is bounded whatever the number of held jobs; plain jobs take the same path
-- as before flow control (one HGETALL, then the moves), with no extra commands.
--
-- KEYS[1..nq]        <prefix>:{<queue>} bases      KEYS[nq+1..2nq]  wake lists (standalone)
-- KEYS[2nq+1]        standalone: <prefix>:{_}:ptasks (paused task types)
-- ARGV[1] now ('' = Redis TIME)  ARGV[2] nq  ARGV[3] limit  ARGV[4] worker id
-- ARGV[5] lease seconds  ARGV[6] promote max  ARGV[7] wake cap
-- ARGV[8..7+nq] the lease token of each queue ("<32 hex>:<queue>")
-- ARGV[8+nq..]  cluster: the paused task types (read by the caller from ptasks)
-- Returns {{id, {field, value, ...}, ...}, {wake tokens per queue}, taken per queue}.
-- When the batch is full and ready jobs are left, one token is pushed for each such
-- queue, so a wake-up that this call consumed is passed on to another waiter.

local now, now_s = clock(ARGV[1])
local nq, limit, worker = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local lease_until_s = fmt(now + tonumber(ARGV[5]))
local promote_max, cap = tonumber(ARGV[6]), tonumber(ARGV[7])
if #KEYS > 2 * nq then
  for _, t in ipairs(redis.call('SMEMBERS', KEYS[2 * nq + 1])) do PTASK[t] = true end
else
  for k = 8 + nq, #ARGV do PTASK[ARGV[k]] = true end
end
local any_ptask = next(PTASK) ~= nil
local jobs, wakes, taken = {}, {}, 0
local paused, budget_hit = {}, {}
local budget = 4 * limit + 64

-- Why job f (a field map) may not run now: 't', 'l', 'r' (and when a token is due), or
-- nil (and its bucket's tokens, for a rate key).
local function held(base, f)
  if any_ptask and PTASK[f.task] then return 't' end
  local lk, rk = f.limit_key, f.rate_key
  if lk and hnum(base .. ':slots', lk) >= tonumber(f.limit_n or '1') then return 'l' end
  if rk then
    local tokens = bucket(base, rk, now, tonumber(f.rate or '1'), tonumber(f.burst or '1'))
    if tokens < 1 then return 'r', fmt(now + (1 - tokens) / tonumber(f.rate or '1')) end
    return nil, tokens
  end
  return nil
end

for g = 1, nq do
  local base = KEYS[g]
  wakes[g] = 0
  local due = redis.call('ZRANGEBYSCORE', base .. ':sched', '-inf', now_s,
                         'LIMIT', 0, promote_max)
  for _, id in ipairs(due) do
    local h = base .. ':j:' .. id
    leave(base, id, 'scheduled', h)
    enter(base, id, 'queued', h, redis.call('HGET', h, 'run_at'))
  end
  local rdue = redis.call('ZRANGEBYSCORE', base .. ':rdue', '-inf', now_s,
                          'LIMIT', 0, promote_max)
  for _, rk in ipairs(rdue) do
    redis.call('ZREM', base .. ':rdue', rk)
    unpark_rate(base, rk, now)
  end
  paused[g] = is_paused(base)
  if not paused[g] and taken < limit then
    local token = ARGV[7 + g]
    local ready = base .. ':ready'
    local parked = 0
    local queued_ids, run_args = {}, {}  -- written once per queue (multi)
    while taken < limit do
      -- every member popped is either taken or parked
      local members = redis.call('ZPOPMIN', ready, limit - taken)
      if not members[1] then break end
      for k = 1, #members, 2 do
        local m = members[k]
        local id = string.sub(m, 18)
        local h = base .. ':j:' .. id
        local rec = redis.call('HGETALL', h)
        local f = {}
        for x = 1, #rec, 2 do f[rec[x]] = rec[x + 1] end
        local why, tokens = nil, nil
        if any_ptask or f.limit_key or f.rate_key then why, tokens = held(base, f) end
        if why then
          if f.limit_key then
            hadd(base .. ':lrc', f.limit_key, -1)
            if why ~= 'l' then refill(base, f.limit_key) end
          end
          park(base, h, why, ({t = f.task, l = f.limit_key, r = f.rate_key})[why],
               members[k + 1], m, tokens)
          parked = parked + 1
        else
          if f.priority then redis.call('ZREM', base .. ':age', id) end  -- see _lib.lua
          queued_ids[#queued_ids + 1] = id
          if f.limit_key then take_slot(base, f.limit_key) end
          if f.rate_key then
            redis.call('HSET', base .. ':tb', f.rate_key, fmt(tokens - 1) .. ' ' .. now_s)
            redis.call('ZADD', base .. ':tbfull',
                       fmt(now + (tonumber(f.burst or '1') - tokens + 1) / tonumber(f.rate or '1')),
                       f.rate_key)
          end
          local attempts = tonumber(f.attempts or '0') + 1
          redis.call('HSET', h, 'status', 'running', 'attempts', attempts,
                     'lease_token', token, 'lease_until', lease_until_s, 'started_at', now_s,
                     'worker', worker)
          run_args[#run_args + 1] = lease_until_s
          run_args[#run_args + 1] = id
          -- the record as read, then the fields changed (later pairs win when decoded)
          rec[#rec + 1] = 'status'; rec[#rec + 1] = 'running'
          rec[#rec + 1] = 'attempts'; rec[#rec + 1] = tostring(attempts)
          rec[#rec + 1] = 'lease_token'; rec[#rec + 1] = token
          rec[#rec + 1] = 'lease_until'; rec[#rec + 1] = lease_until_s
          rec[#rec + 1] = 'started_at'; rec[#rec + 1] = now_s
          rec[#rec + 1] = 'worker'; rec[#rec + 1] = worker
          jobs[#jobs + 1] = id
          jobs[#jobs + 1] = rec
          taken = taken + 1
        end
      end
      if parked >= budget then budget_hit[g] = true; break end
    end
    multi('ZREM', base .. ':ids:queued', queued_ids)
    multi('ZADD', base .. ':run', run_args)
  end
end
for g = 1, nq do
  if not paused[g] and (taken >= limit or budget_hit[g])
      and redis.call('ZCARD', KEYS[g] .. ':ready') > 0 then
    wake(KEYS[nq + g], 1, cap)
    wakes[g] = 1
  end
end
return {jobs, wakes, taken}
