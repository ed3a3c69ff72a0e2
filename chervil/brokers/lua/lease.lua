-- lease: named leases (e.g. the scheduler's): one owner at a time until `until`.
--
-- KEYS[1] <prefix>:{_}:lease:<name> (hash owner, until)
-- ARGV[1] 'acquire' | 'release'  ARGV[2] now ('' = Redis TIME)  ARGV[3] owner
-- ARGV[4] ttl (s, acquire)       ARGV[5] '1': also let Redis expire the key (real time)
-- Returns 1 if the caller holds the lease (acquire) or released it, else 0.

local now = clock(ARGV[2])
local cur = redis.call('HMGET', KEYS[1], 'owner', 'until')
if ARGV[1] == 'release' then
  if cur[1] == ARGV[3] then redis.call('DEL', KEYS[1]); return 1 end
  return 0
end
if cur[1] and cur[1] ~= ARGV[3] and tonumber(cur[2]) >= now then return 0 end
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'until', fmt(now + ttl))
if ARGV[5] == '1' then
  redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000) + 1000)
else
  redis.call('PERSIST', KEYS[1])
end
return 1
