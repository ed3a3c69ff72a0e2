-- prune: delete terminal records of one queue finished before the cut-offs (strictly),
-- at most `batch` per status per call; and forget, at most `batch` of each, the window
-- unique keys whose window has passed (uniqx) and the token buckets full again (tbfull:
-- a missing bucket is a full one).
--
-- KEYS[1]  <prefix>:{<queue>} base
-- ARGV[1] succeeded_before  ARGV[2] dead_before (also for cancelled)  ARGV[3] batch
-- ARGV[4] now ('' = Redis TIME)
-- Returns {records deleted, keys forgotten}.

local base = KEYS[1]
local cut = {succeeded = ARGV[1], dead = ARGV[2], cancelled = ARGV[2]}
local batch = tonumber(ARGV[3])
local count = 0
for _, st in ipairs({'succeeded', 'dead', 'cancelled'}) do
  local ids = redis.call('ZRANGEBYSCORE', base .. ':fin:' .. st, '-inf', '(' .. cut[st],
                         'LIMIT', 0, batch)
  for _, id in ipairs(ids) do
    redis.call('DEL', base .. ':j:' .. id)
    redis.call('ZREM', base .. ':fin:' .. st, id)
    redis.call('ZREM', base .. ':ids:' .. st, id)
    count = count + 1
  end
end
local _, now_s = clock(ARGV[4])
local forgot = 0
local uks = redis.call('ZRANGEBYSCORE', base .. ':uniqx', '-inf', now_s, 'LIMIT', 0, batch)
for _, uk in ipairs(uks) do
  redis.call('HDEL', base .. ':uniq', uk)
  redis.call('HDEL', base .. ':uniqw', uk)
  redis.call('ZREM', base .. ':uniqx', uk)
  forgot = forgot + 1
end
local rks = redis.call('ZRANGEBYSCORE', base .. ':tbfull', '-inf', now_s, 'LIMIT', 0, batch)
for _, rk in ipairs(rks) do
  redis.call('HDEL', base .. ':tb', rk)
  redis.call('ZREM', base .. ':tbfull', rk)
  forgot = forgot + 1
end
return {count, forgot}
