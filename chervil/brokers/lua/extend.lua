-- extend: push the leases out to now + lease seconds; report the ones no longer held.
--
-- KEYS[1..nq]  <prefix>:{<queue>} bases
-- ARGV[1] now ('' = Redis TIME)  ARGV[2] nq  ARGV[3] lease seconds
-- then per queue: n, and n times (id, token)
-- Returns the ids whose lease is lost (not running, or another token).

local now = clock(ARGV[1])
local nq = tonumber(ARGV[2])
local until_s = fmt(now + tonumber(ARGV[3]))
local i = 4
local lost = {}
for g = 1, nq do
  local base = KEYS[g]
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    local id, token = ARGV[i], ARGV[i + 1]
    i = i + 2
    local h = base .. ':j:' .. id
    local cur = redis.call('HMGET', h, 'status', 'lease_token')
    if cur[1] == 'running' and cur[2] == token then
      redis.call('HSET', h, 'lease_until', until_s)
      redis.call('ZADD', base .. ':run', until_s, id)
    else
      lost[#lost + 1] = id
    end
  end
end
return lost
