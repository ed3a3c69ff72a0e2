-- release: hand leased jobs back unstarted; the attempt is not spent. delay > 0 makes
-- them scheduled at now + delay, otherwise queued at once.
--
-- KEYS[1..nq]  <prefix>:{<queue>} bases      KEYS[nq+1..2nq]  wake lists (standalone)
-- ARGV[1] now ('' = Redis TIME)  ARGV[2] nq  ARGV[3] wake cap  ARGV[4] delay (s)
-- then per queue: n, and n times (id, token)
-- Returns {number released, {wake tokens per queue}}. Frees limit-key slots (see finish).

local now, now_s = clock(ARGV[1])
local nq, cap, delay = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local run_at, run_at_s = now, now_s
if delay > 0 then run_at = now + delay; run_at_s = fmt(run_at) end
local i = 5
local released, wakes = 0, {}
for g = 1, nq do
  local base = KEYS[g]
  local n = tonumber(ARGV[i])
  i = i + 1
  local head = false
  local ready, new_head = 0, false
  UNPARKED = 0
  for _ = 1, n do
    local id, token = ARGV[i], ARGV[i + 1]
    i = i + 2
    local h = base .. ':j:' .. id
    local cur = redis.call('HMGET', h, 'status', 'lease_token', 'attempts', 'limit_key')
    if cur[1] == 'running' and cur[2] == token then
      leave(base, id, 'running', h, cur[4])
      local attempts = math.max(tonumber(cur[3] or '0') - 1, 0)
      redis.call('HSET', h, 'attempts', fmt(attempts), 'run_at', run_at_s)
      redis.call('HDEL', h, 'lease_until', 'lease_token', 'worker')
      if delay > 0 then
        local first
        head, first = new_first(base, head, run_at)
        new_head = new_head or first
        enter(base, id, 'scheduled', h, run_at_s)
      else
        enter(base, id, 'queued', h, run_at_s)
        ready = ready + 1
      end
      released = released + 1
    end
  end
  local tokens = 0
  if not is_paused(base) then
    tokens = ready + UNPARKED
    if new_head and tokens == 0 then tokens = 1 end
  end
  wake(KEYS[nq + g], tokens, cap)
  wakes[g] = tokens
end
return {released, wakes}
