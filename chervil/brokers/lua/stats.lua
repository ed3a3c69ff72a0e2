-- stats: per queue, counts by status, the age of the oldest ready job, paused flag.
-- O(1) per queue (ZCARD, a ZRANGE of each index below), whatever the number of jobs.
-- The oldest queued job is the older of the head of ready's score-0 band (priority 0,
-- by run_at) and the head of age (every other queued job, see _lib.lua). Entries of age
-- that belong to neither (written by a version that put every queued job there) are
-- dropped as they come to its head, at most STALE per call.
--
-- KEYS[1..nq]  <prefix>:{<queue>} bases
-- ARGV[1] now ('' = Redis TIME)  ARGV[2] nq
-- Returns per queue {paused 0|1, scheduled, queued, running, succeeded, dead, cancelled,
-- age of the oldest ready job in seconds ('' if none)}.

local STALE = 1000
local now = clock(ARGV[1])

local function oldest_queued(base)
  local oldest = nil
  local band = redis.call('ZRANGEBYSCORE', base .. ':ready', 0, 0, 'LIMIT', 0, 1)
  if band[1] then oldest = member_run_at(band[1]) end
  for _ = 1, STALE do
    local head = redis.call('ZRANGE', base .. ':age', 0, 0, 'WITHSCORES')
    if not head[1] then break end
    local v = redis.call('HMGET', base .. ':j:' .. head[1], 'status', 'park', 'priority')
    if v[1] == 'queued' and (v[2] or (v[3] and v[3] ~= '0')) then
      local t = tonumber(head[2])
      if not oldest or t < oldest then oldest = t end
      break
    end
    redis.call('ZREM', base .. ':age', head[1])
  end
  return oldest
end

local out = {}
for g = 1, tonumber(ARGV[2]) do
  local base = KEYS[g]
  local oldest = oldest_queued(base)
  local age = ''
  if oldest then age = fmt(math.max(0, now - oldest)) end
  out[g] = {
    redis.call('EXISTS', base .. ':paused'),
    redis.call('ZCARD', base .. ':sched'),
    redis.call('ZCARD', base .. ':ids:queued'),  -- parked jobs included
    redis.call('ZCARD', base .. ':run'),
    redis.call('ZCARD', base .. ':fin:succeeded'),
    redis.call('ZCARD', base .. ':fin:dead'),
    redis.call('ZCARD', base .. ':fin:cancelled'),
    age,
  }
end
return out
