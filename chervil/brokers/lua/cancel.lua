-- cancel: waiting (scheduled or queued) jobs -> cancelled. Running jobs are untouched.
--
-- KEYS[1..nq]  <prefix>:{<queue>} bases
-- ARGV[1] now ('' = Redis TIME)  ARGV[2] nq  ARGV[3] dead ttl (cancelled records)
-- ARGV[4] n: the number of ids that follow, each looked for in every queue given;
--         n = -1 (purge): up to ARGV[5] waiting jobs of each queue
-- Returns {number cancelled, 1 if a purge left waiting jobs for another call}.

local now, now_s = clock(ARGV[1])
local nq, ttl, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local count, more = 0, 0
for g = 1, nq do
  local base = KEYS[g]
  local ids = {}
  if n < 0 then
    local batch = tonumber(ARGV[5])
    for _, id in ipairs(redis.call('ZRANGE', base .. ':ids:queued', 0, batch - 1)) do
      ids[#ids + 1] = id  -- ids:queued: parked jobs too
    end
    for _, id in ipairs(redis.call('ZRANGE', base .. ':sched', 0, batch - 1)) do
      ids[#ids + 1] = id
    end
    if redis.call('ZCARD', base .. ':ids:queued') + redis.call('ZCARD', base .. ':sched')
        > #ids then
      more = 1
    end
  else
    for k = 1, n do ids[k] = ARGV[4 + k] end
  end
  for _, id in ipairs(ids) do
    local h = base .. ':j:' .. id
    local st = redis.call('HGET', h, 'status')
    if st == 'queued' or st == 'scheduled' then
      leave(base, id, st, h)
      redis.call('HSET', h, 'finished_at', now_s)
      free_unique(base, id, h)
      enter(base, id, 'cancelled', h, now_s, ttl)
      count = count + 1
    end
  end
end
return {count, more}
