-- finish: record the outcomes of attempts; an outcome whose lease token is not the
-- job's current one (or whose job is not running) is rejected: fencing.
--
-- KEYS[1..nq]  <prefix>:{<queue>} bases      KEYS[nq+1..2nq]  wake lists (standalone)
-- ARGV[1] now ('' = Redis TIME)  ARGV[2] nq  ARGV[3] wake cap
-- ARGV[4] succeeded ttl (s, 0 = keep until pruned)  ARGV[5] dead ttl
-- then per queue: n, and n times 7 fields:
--   id, token, kind ('s' succeeded | 'r' retry | 'd' dead), retry_at ('' = now),
--   dead_reason, error JSON ('' none), result JSON ('' none)
-- Returns {{1|0 per outcome}, {wake tokens per queue}}.
-- Leaving running frees the job's limit-key slot; once the queue's outcomes are recorded,
-- as many parked jobs of each such key as it has room for go back to ready (one refill
-- per key, not per job); a rejected (stale) outcome frees nothing.

local now, now_s = clock(ARGV[1])
local nq, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl = {succeeded = tonumber(ARGV[4]), dead = tonumber(ARGV[5])}
local i = 6
local out, wakes = {}, {}
for g = 1, nq do
  local base = KEYS[g]
  local n = tonumber(ARGV[i])
  i = i + 1
  local head = false
  local ready, new_head = 0, false
  UNPARKED = 0
  FREED = {}
  -- index moves of the batch, written once per queue (multi): out of run; succeeded
  local run_gone, ok_ids, ok_fin = {}, {}, {}
  for _ = 1, n do
    local id, token, kind, retry_at_s, reason, err, result = unpack(ARGV, i, i + 6)
    i = i + 7
    local h = base .. ':j:' .. id
    local cur = redis.call('HMGET', h, 'status', 'lease_token', 'limit_key', 'unique_key')
    if cur[1] ~= 'running' or cur[2] ~= token then
      out[#out + 1] = 0
    else
      -- leave(base, id, 'running', h, cur[3]), its ZREM deferred
      run_gone[#run_gone + 1] = id
      if cur[3] then free_slot(base, cur[3]) end
      if kind ~= 's' then redis.call('HDEL', h, 'lease_until') end
      if kind == 'r' then
        local run_at = now
        if retry_at_s == '' then retry_at_s = now_s else run_at = tonumber(retry_at_s) end
        redis.call('HSET', h, 'run_at', retry_at_s)
        redis.call('HDEL', h, 'worker')
        if err ~= '' then redis.call('HSET', h, 'last_error', err)
        else redis.call('HDEL', h, 'last_error') end
        if run_at > now then
          local first
          head, first = new_first(base, head, run_at)
          new_head = new_head or first
          enter(base, id, 'scheduled', h, retry_at_s)
        else
          enter(base, id, 'queued', h, retry_at_s)
          ready = ready + 1
        end
      elseif kind == 's' then
        -- lease_until '' reads as none: one command fewer than an HDEL
        local fields = {'status', 'succeeded', 'finished_at', now_s, 'lease_until', ''}
        if result ~= '' then fields[7] = 'result'; fields[8] = result end
        if err ~= '' then fields[#fields + 1] = 'last_error'; fields[#fields + 1] = err end
        redis.call('HSET', h, unpack(fields))
        free_unique(base, id, h, cur[4] or false)
        -- index(base, id, 'succeeded', h, now_s, ttl.succeeded), its ZADDs deferred
        ok_ids[#ok_ids + 1] = 0; ok_ids[#ok_ids + 1] = id
        ok_fin[#ok_fin + 1] = now_s; ok_fin[#ok_fin + 1] = id
        if ttl.succeeded > 0 then redis.call('EXPIRE', h, ttl.succeeded) end
      else
        redis.call('HSET', h, 'status', 'dead', 'finished_at', now_s, 'dead_reason', reason)
        if err ~= '' then redis.call('HSET', h, 'last_error', err)
        else redis.call('HDEL', h, 'last_error') end
        free_unique(base, id, h, cur[4] or false)
        index(base, id, 'dead', h, now_s, ttl.dead)
      end
      out[#out + 1] = 1
    end
  end
  multi('ZREM', base .. ':run', run_gone)
  multi('ZADD', base .. ':ids:succeeded', ok_ids)
  multi('ZADD', base .. ':fin:succeeded', ok_fin)
  for lk in pairs(FREED) do refill(base, lk) end
  FREED = nil
  local tokens = 0
  if not is_paused(base) then
    tokens = ready + UNPARKED
    if new_head and tokens == 0 then tokens = 1 end
  end
  wake(KEYS[nq + g], tokens, cap)
  wakes[g] = tokens
end
return {out, wakes}
