-- recover: take back lost leases. Each counts as a lost lease (the attempt stays
-- counted); at max_lost the job goes dead with reason worker_lost, else it is queued.
--
-- KEYS[1..nq]  <prefix>:{<queue>} bases      KEYS[nq+1..2nq]  wake lists (standalone)
-- ARGV[1] now ('' = Redis TIME)  ARGV[2] nq  ARGV[3] wake cap  ARGV[4] max lost leases
-- ARGV[5] error JSON  ARGV[6] dead ttl  ARGV[7] batch (expired leases per queue per call)
-- then per queue: n, and n times (id, token); n = -1: every lease of that queue that
-- expired before now (lease_until < now), at most `batch` of them.
-- Returns {number recovered, {wake tokens per queue}, 1 if expired leases remain}.
-- Frees limit-key slots (see finish).

local now, now_s = clock(ARGV[1])
local nq, cap, max_lost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local err, dead_ttl, batch = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local i = 8
local recovered, wakes, more = 0, {}, 0
for g = 1, nq do
  local base = KEYS[g]
  local n = tonumber(ARGV[i])
  i = i + 1
  local leases = {}
  if n < 0 then
    local ids = redis.call('ZRANGEBYSCORE', base .. ':run', '-inf', '(' .. now_s,
                           'LIMIT', 0, batch)
    if #ids == batch then more = 1 end
    for _, id in ipairs(ids) do leases[#leases + 1] = {id, false} end
  else
    for _ = 1, n do
      leases[#leases + 1] = {ARGV[i], ARGV[i + 1]}
      i = i + 2
    end
  end
  local ready = 0
  UNPARKED = 0
  for _, lease in ipairs(leases) do
    local id, token = lease[1], lease[2]
    local h = base .. ':j:' .. id
    local cur = redis.call('HMGET', h, 'status', 'lease_token', 'limit_key')
    if cur[1] == 'running' and (token == false or cur[2] == token) then
      leave(base, id, 'running', h, cur[3])
      local lost = redis.call('HINCRBY', h, 'lost_leases', 1)
      redis.call('HSET', h, 'last_error', err, 'run_at', now_s)
      redis.call('HDEL', h, 'lease_until', 'lease_token', 'worker')
      if lost >= max_lost then
        redis.call('HSET', h, 'dead_reason', 'worker_lost', 'finished_at', now_s)
        free_unique(base, id, h)
        enter(base, id, 'dead', h, now_s, dead_ttl)
      else
        enter(base, id, 'queued', h, now_s)
        ready = ready + 1
      end
      recovered = recovered + 1
    elseif not cur[1] and token == false then
      redis.call('ZREM', base .. ':run', id)  -- its record is gone: drop the entry
    end
  end
  local tokens = 0
  if not is_paused(base) then tokens = ready + UNPARKED end
  wake(KEYS[nq + g], tokens, cap)
  wakes[g] = tokens
end
return {recovered, wakes, more}
