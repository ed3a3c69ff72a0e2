-- unpause: a task type was resumed; move its parked jobs (tpark:<task>) back, at most
-- `batch` per queue per call. They go through place() again, so a limit or rate key
-- may park them anew.
--
-- KEYS[1..nq]  <prefix>:{<queue>} bases      KEYS[nq+1..2nq]  wake lists (standalone)
-- ARGV[1] now ('' = Redis TIME)  ARGV[2] nq  ARGV[3] wake cap  ARGV[4] task  ARGV[5] batch
-- Returns {number moved, {wake tokens per queue}, 1 if parked jobs remain}.

clock(ARGV[1])
local nq, cap, task, batch = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local moved, wakes, more = 0, {}, 0
for g = 1, nq do
  local base = KEYS[g]
  local pk = base .. ':tpark:' .. task
  UNPARKED = 0
  for _, m in ipairs(redis.call('ZRANGE', pk, 0, batch - 1)) do
    local id = string.sub(m, 18)
    local h = base .. ':j:' .. id
    redis.call('ZREM', pk, m)
    redis.call('HDEL', h, 'park')
    place(base, id, h, flow_fields(h), redis.call('HGET', h, 'run_at'), 't')
    moved = moved + 1
    UNPARKED = UNPARKED + 1
  end
  if redis.call('EXISTS', pk) == 1 then more = 1 end
  local tokens = 0
  if not is_paused(base) then tokens = UNPARKED end
  wake(KEYS[nq + g], tokens, cap)
  wakes[g] = tokens
end
return {moved, wakes, more}
