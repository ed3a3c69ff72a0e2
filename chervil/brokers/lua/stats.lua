-- stats: per queue, counts by status, the age of the oldest ready job, paused flag.
-- O(1) per queue (ZCARD, one ZRANGE), whatever the number of jobs.
--
-- KEYS[1..nq]  <prefix>:{<queue>} bases
-- ARGV[1] now ('' = Redis TIME)  ARGV[2] nq
-- Returns per queue {paused 0|1, scheduled, queued, running, succeeded, dead, cancelled,
-- age of the oldest ready job in seconds ('' if none)}.

local now = clock(ARGV[1])
local out = {}
for g = 1, tonumber(ARGV[2]) do
  local base = KEYS[g]
  local oldest = redis.call('ZRANGE', base .. ':age', 0, 0, 'WITHSCORES')
  local age = ''
  if oldest[2] then age = fmt(math.max(0, now - tonumber(oldest[2]))) end
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
