-- marks: the last fire time of each cron schedule; a mark never moves backwards.
--
-- KEYS[1] <prefix>:{_}:marks (hash schedule name -> fire time)
-- ARGV[1] schedule name  ARGV[2] fire time
-- Returns 1 if the mark moved forward, else 0.

local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
