-- requeue: dead, scheduled or cancelled jobs -> queued now, attempts and lost leases
-- reset (the record of the failure, last_error, is kept).
--
-- KEYS[1..nq]  <prefix>:{<queue>} bases      KEYS[nq+1..2nq]  wake lists (standalone)
-- ARGV[1] now ('' = Redis TIME)  ARGV[2] nq  ARGV[3] wake cap
-- ARGV[4] '1': dead jobs only   ARGV[5] task name ('' = any)
-- ARGV[6] n, ARGV[7..6+n] job ids; each id is looked for in every queue given.
-- Returns {number requeued, {wake tokens per queue}}.

local now, now_s = clock(ARGV[1])
local nq, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local dead_only, task = ARGV[4] == '1', ARGV[5]
local n = tonumber(ARGV[6])
local allowed = {dead = true, scheduled = not dead_only, cancelled = not dead_only}
local count, wakes = 0, {}
for g = 1, nq do
  local base = KEYS[g]
  local ready = 0
  UNPARKED = 0
  for k = 1, n do
    local id = ARGV[6 + k]
    local h = base .. ':j:' .. id
    local cur = redis.call('HMGET', h, 'status', 'task', 'unique_key')
    if cur[1] and allowed[cur[1]] and (task == '' or cur[2] == task) then
      leave(base, id, cur[1], h)
      redis.call('HSET', h, 'run_at', now_s, 'attempts', '0')
      redis.call('HDEL', h, 'lost_leases', 'dead_reason', 'finished_at', 'lease_token')
      if cur[3] and not unique_holder(base, cur[3], now) then
        take_unique(base, cur[3], id, 'active', '')
      end
      enter(base, id, 'queued', h, now_s)
      ready = ready + 1
      count = count + 1
    end
  end
  local tokens = 0
  if not is_paused(base) then tokens = ready + UNPARKED end
  wake(KEYS[nq + g], tokens, cap)
  wakes[g] = tokens
end
return {count, wakes}
