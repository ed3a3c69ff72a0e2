-- reserve: lease up to `limit` ready jobs, queues in the order given (strict priority),
-- inside a queue by priority, run_at, id. Due scheduled jobs are promoted first, at
-- most `promote max` per queue per call (the rest on later calls), so a call costs
-- O(log n) whatever the backlog. Paused queues are promoted but not taken from.
--
-- KEYS[1..nq]        <prefix>:{<queue>} bases      KEYS[nq+1..2nq]  wake lists (standalone)
-- ARGV[1] now ('' = Redis TIME)  ARGV[2] nq  ARGV[3] limit  ARGV[4] worker id
-- ARGV[5] lease seconds  ARGV[6] promote max  ARGV[7] wake cap
-- ARGV[8..7+nq] the lease token of each queue ("<32 hex>:<queue>")
-- Returns {{id, {field, value, ...}, ...}, {wake tokens per queue}, taken per queue}.
-- When the batch is full and ready jobs are left, one token is pushed for each such
-- queue, so a wake-up that this call consumed is passed on to another waiter.

local now, now_s = clock(ARGV[1])
local nq, limit, worker = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local lease_until_s = fmt(now + tonumber(ARGV[5]))
local promote_max, cap = tonumber(ARGV[6]), tonumber(ARGV[7])
local jobs, wakes, taken = {}, {}, 0
local paused = {}
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
  paused[g] = is_paused(base)
  if not paused[g] and taken < limit then
    local token = ARGV[7 + g]
    local members = redis.call('ZRANGE', base .. ':ready', 0, limit - taken - 1)
    for _, m in ipairs(members) do
      local id = string.sub(m, 18)
      local h = base .. ':j:' .. id
      leave(base, id, 'queued', h)
      redis.call('HSET', h, 'lease_token', token, 'lease_until', lease_until_s,
                 'started_at', now_s, 'worker', worker)
      redis.call('HINCRBY', h, 'attempts', 1)
      enter(base, id, 'running', h, lease_until_s)
      jobs[#jobs + 1] = id
      jobs[#jobs + 1] = redis.call('HGETALL', h)
      taken = taken + 1
    end
  end
end
if taken >= limit then
  for g = 1, nq do
    if not paused[g] and redis.call('ZCARD', KEYS[g] .. ':ready') > 0 then
      wake(KEYS[nq + g], 1, cap)
      wakes[g] = 1
    end
  end
end
return {jobs, wakes, taken}
