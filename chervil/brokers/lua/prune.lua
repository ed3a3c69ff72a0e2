-- prune: delete terminal records of one queue finished before the cut-offs (strictly),
-- at most `batch` per status per call.
--
-- KEYS[1]  <prefix>:{<queue>} base
-- ARGV[1] succeeded_before  ARGV[2] dead_before (also for cancelled)  ARGV[3] batch
-- Returns the number of records deleted.

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
return count
