-- enqueue_plain: add one job with no unique, limit or rate key, ready now, to one queue.
-- The record and indexes are those enqueue.lua writes for such a job; this script exists
-- because it costs Redis about 40 µs where enqueue.lua costs 60: no _lib.lua to define
-- (7 µs per call), no flow-control branches, no paused-task set (a job of a paused task
-- enters ready and reserve parks it, as on a cluster).
--
-- KEYS[1]  <prefix>:{<queue>} base of the queue (see _lib.lua for its keys)
-- KEYS[2]  standalone only: <prefix>:{_}:wake:<queue>, pushed here; in cluster mode it is
--          absent and the caller pushes the returned count
-- ARGV[1] now ('' = Redis TIME)  ARGV[2] queue  ARGV[3] id  ARGV[4] task  ARGV[5] payload
-- ARGV[6] priority  ARGV[7] max_attempts  ARGV[8] wake cap  ARGV[9] task_version ('' none)
-- ARGV[10] trace JSON ('' none)
-- Returns {{id, duplicate (0|1)}, {wake tokens}}: a job whose id exists (a retry after a
-- lost reply) is not added again.

local base, id = KEYS[1], ARGV[3]
local h = base .. ':j:' .. id
if redis.call('EXISTS', h) == 1 then return {{id, 1}, {0}} end
local now, now_s = tonumber(ARGV[1]), ARGV[1]
if now_s == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  now_s = string.format('%.17g', now)  -- fmt() of _lib.lua
end
local prio = ARGV[6]
local fields = {'task', ARGV[4], 'queue', ARGV[2], 'payload', ARGV[5], 'status', 'queued',
                'attempts', '0', 'max_attempts', ARGV[7], 'created_at', now_s,
                'run_at', now_s}
local n = 16
if prio ~= '0' then fields[n + 1] = 'priority'; fields[n + 2] = prio; n = n + 2 end
if ARGV[9] ~= '' then fields[n + 1] = 'task_version'; fields[n + 2] = ARGV[9]; n = n + 2 end
if ARGV[10] ~= '' then fields[n + 1] = 'trace'; fields[n + 2] = ARGV[10] end
redis.call('HSET', h, unpack(fields))
redis.call('ZADD', base .. ':ids:queued', 0, id)
-- ready's member: run_at in whole microseconds, 17 digits, then the id (rkey() of _lib.lua)
redis.call('ZADD', base .. ':ready', 0 - tonumber(prio),
           string.format('%017.0f', math.floor(now * 1000000)) .. id)
if prio ~= '0' then redis.call('ZADD', base .. ':age', now_s, id) end
if redis.call('EXISTS', base .. ':paused') == 1 then return {{id, 0}, {0}} end
if KEYS[2] then
  local cap = tonumber(ARGV[8])
  if redis.call('LPUSH', KEYS[2], '1') > cap then redis.call('LTRIM', KEYS[2], 0, cap - 1) end
end
return {{id, 0}, {1}}
