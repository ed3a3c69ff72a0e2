-- worker: heartbeats of workers.
--
-- KEYS[1] <prefix>:{_}:workers (hash id -> info JSON)
-- KEYS[2] <prefix>:{_}:seen    (zset id, score last heartbeat)
-- ARGV[1] 'register' | 'unregister' | 'list'   ARGV[2] now ('' = Redis TIME)
-- register:   ARGV[3] id, ARGV[4] info JSON; also forgets workers silent for a day
-- unregister: ARGV[3] id
-- list:       ARGV[3] seen_within (s): returns {info JSON, seen_at, ...}

local mode = ARGV[1]
local now, now_s = clock(ARGV[2])
if mode == 'register' then
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
  redis.call('ZADD', KEYS[2], now_s, ARGV[3])
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', fmt(now - 86400), 'LIMIT', 0, 100)
  for _, id in ipairs(gone) do
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
  end
  return 1
elseif mode == 'unregister' then
  redis.call('HDEL', KEYS[1], ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[3])
  return 1
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], fmt(now - tonumber(ARGV[3])), '+inf',
                       'WITHSCORES')
local out = {}
for k = 1, #ids, 2 do
  local info = redis.call('HGET', KEYS[1], ids[k])
  if info then
    out[#out + 1] = info
    out[#out + 1] = ids[k + 1]
  end
end
return out
