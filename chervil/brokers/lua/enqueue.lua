-- enqueue: add jobs to one or more queues, atomically (one script = one commit).
--
-- KEYS[1..nq]        <prefix>:{<queue>} base of each queue (see _lib.lua for its keys)
-- KEYS[nq+1..2nq]    standalone only: <prefix>:{_}:wake:<queue>, pushed here; in cluster
--                    mode they are absent and the caller pushes the returned counts
-- KEYS[2nq+1]        standalone only: <prefix>:{_}:ptasks (jobs of a paused task are
--                    parked at once; in cluster mode reserve parks them)
-- ARGV[1]  now ('' = Redis TIME)     ARGV[2] nq     ARGV[3] wake cap
-- then per queue: queue name, n, and n times 16 fields:
--   id, task, payload, priority, max_attempts, run_at ('' = now), unique_key ('' none),
--   task_version ('' none), trace JSON ('' none), unique_mode, unique_until ('' none),
--   limit_key ('' none), limit_n, rate_key ('' none), rate_per_second, rate_burst
-- A queued job with a limit or rate key, or of a paused task, may be parked here (see
-- place() in _lib.lua) instead of entering ready.
-- Returns {{id, duplicate (0|1), ...per job}, {wake tokens per queue}}.
-- A job whose id exists, or whose unique key a live job holds, is not added: the
-- existing id comes back with duplicate = 1.

local now, now_s = clock(ARGV[1])
local nq, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
if #KEYS > 2 * nq then
  for _, t in ipairs(redis.call('SMEMBERS', KEYS[2 * nq + 1])) do PTASK[t] = true end
end
local i = 4
local out, wakes = {}, {}
for g = 1, nq do
  local base, wkey = KEYS[g], KEYS[nq + g]
  local queue, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local head = false
  local ready, new_head = 0, false
  for _ = 1, n do
    local id, task, payload, prio, max_attempts, run_at_s, uk, version, trace, mode,
      until_s, lk, ln, rk, rate, burst = unpack(ARGV, i, i + 15)
    i = i + 16
    local h = base .. ':j:' .. id
    local dup = nil
    if redis.call('EXISTS', h) == 1 then
      dup = id
    elseif uk ~= '' then
      dup = unique_holder(base, uk, now)
    end
    if dup then
      out[#out + 1] = dup
      out[#out + 1] = 1
    else
      local run_at = now
      if run_at_s == '' then run_at_s = now_s else run_at = tonumber(run_at_s) end
      local st = 'queued'
      if run_at > now then st = 'scheduled' end
      local fields = {'task', task, 'queue', queue, 'payload', payload, 'status', st,
                      'attempts', '0', 'max_attempts', max_attempts, 'created_at', now_s,
                      'run_at', run_at_s}
      if prio ~= '0' then fields[#fields + 1] = 'priority'; fields[#fields + 1] = prio end
      if version ~= '' then
        fields[#fields + 1] = 'task_version'; fields[#fields + 1] = version
      end
      if trace ~= '' then fields[#fields + 1] = 'trace'; fields[#fields + 1] = trace end
      if uk ~= '' then
        fields[#fields + 1] = 'unique_key'; fields[#fields + 1] = uk
        if mode ~= 'active' then
          fields[#fields + 1] = 'unique_mode'; fields[#fields + 1] = mode
        end
        take_unique(base, uk, id, mode, until_s)
      end
      if lk ~= '' then
        fields[#fields + 1] = 'limit_key'; fields[#fields + 1] = lk
        fields[#fields + 1] = 'limit_n'; fields[#fields + 1] = ln
      else
        lk = false
      end
      if rk ~= '' then
        fields[#fields + 1] = 'rate_key'; fields[#fields + 1] = rk
        fields[#fields + 1] = 'rate'; fields[#fields + 1] = rate
        fields[#fields + 1] = 'burst'; fields[#fields + 1] = burst
      else
        rk = false
      end
      redis.call('HSET', h, unpack(fields))
      if st == 'scheduled' then
        local first
        head, first = new_first(base, head, run_at)
        new_head = new_head or first
      else
        ready = ready + 1
      end
      index(base, id, st, h, run_at_s, 0,
            {prio = tonumber(prio), lk = lk, ln = tonumber(ln), rk = rk, task = task})
      out[#out + 1] = id
      out[#out + 1] = 0
    end
  end
  local tokens = 0
  if not is_paused(base) then
    tokens = ready
    -- a new first scheduled job: waiters recompute how long they may sleep
    if new_head and tokens == 0 then tokens = 1 end
  end
  wake(wkey, tokens, cap)
  wakes[g] = tokens
end
return {out, wakes}
