"""Lua scripts: the places where several keys must change together or not at all.

Scripts touch keys of one request and one session at once, so rtai targets a single Redis master (with Sentinel for
failover), not Redis Cluster. See docs/adr/0002-redis-topology.md.
"""

from __future__ import annotations

# A Lua function shared by the scripts below: number a frame into its session and append it to the session log.
_APPEND = """
local function append(seq_key, log_key, body, ttl, maxlen, floor)
  local seq = redis.call('INCR', seq_key)
  if seq == 1 then
    -- The counter is new (first frame, or lost in a failover): never number below what the log holds.
    local last = redis.call('XREVRANGE', log_key, '+', '-', 'COUNT', 1)
    if #last > 0 then
      local top = tonumber(string.match(last[1][1], '^(%d+)'))
      if top >= seq then seq = top + 1; redis.call('SET', seq_key, seq) end
    end
  end
  -- `floor`: the highest number the gateway already sent on the session's socket. A failover can lose the counter's
  -- last increments together with their log entries (replication is asynchronous); numbering at or below what the
  -- client has would make it (and the gateway) drop the new frame as already seen.
  if seq <= floor then seq = floor + 1; redis.call('SET', seq_key, seq) end
  -- '%d': Lua's own number-to-string conversion writes 14 significant digits, so a number that large would not be
  -- an entry id.
  redis.call('XADD', log_key, 'MAXLEN', '~', maxlen, string.format('%d-1', seq), 'f', body)
  redis.call('EXPIRE', seq_key, ttl)
  redis.call('EXPIRE', log_key, ttl)
  return seq
end
"""

# Logs a worker's (or the gateway's own) frame for a request. For chunks and final frames it first checks the request's
# state, so that whatever re-runs or duplicates happen upstream, a request gets each chunk index once and exactly one
# final frame. A repeat (a chunk index logged before, or a final frame when the request has one) is not logged again: it
# returns the number and body the frame was logged with. The first answer may never have reached the gateway (its
# connection dropped and the pipeline was sent again), and the frame must still reach the socket; where the socket
# already has it, the gateway drops it by its number.
# A new frame that must follow chunks the gateway sent in the same pipeline (ARGV 9: the chunk index the request must
# have reached) is not logged before they are: one op of a pipeline can fail alone (Redis out of memory for a moment)
# while the next runs, and a later chunk or the final frame logged past the failed chunk would make the log skip it
# for good (its retry is then a repeat of an index below `next`, or a chunk after the final).
# Returns {seq, holder} for a new frame, {seq, holder, logged body} for a repeat, {0, holder} for a frame dropped
# (a new chunk index after the final frame, or a repeat whose log entry is gone), {-1, holder} for a frame held back
# because the chunks before it are not logged; holder: the gateway holding the session now, or ''.
# KEYS: 1 seq, 2 log, 3 session meta hash, 4 request hash, 5 session inflight hash
# ARGV: 1 frame body, 2 kind (chunk|final), 3 chunk index, 4 session ttl s, 5 log maxlen, 6 request id, 7 request ttl s,
#       8 the highest seq the gateway sent on the session's socket (0 if it does not hold it),
#       9 (optional) the `next` chunk index this frame must find
LOG_FRAME = (
    _APPEND
    + """
local holder = redis.call('HGET', KEYS[3], 'gateway') or ''
local function logged(seq)
  if not seq or seq == 0 then return {0, holder} end
  local id = string.format('%d-1', seq)
  local e = redis.call('XRANGE', KEYS[2], id, id)
  if #e == 0 then return {0, holder} end
  return {seq, holder, e[1][2][2]}
end
-- Each chunk's seq, in fixed-width slots by chunk index, so that a repeat finds the number its first copy got.
local SLOT = 16
local idx = tonumber(ARGV[3])
local seqs = ''
if ARGV[2] ~= 'final' then
  seqs = redis.call('HGET', KEYS[4], 'chunk_seqs') or ''
  local nxt = tonumber(redis.call('HGET', KEYS[4], 'next') or '0')
  -- Before the final-frame check: a lost batch may hold a request's last chunks and its final frame together.
  if idx < nxt then return logged(tonumber(string.sub(seqs, idx * SLOT + 1, idx * SLOT + SLOT))) end
end
if redis.call('HEXISTS', KEYS[4], 'final') == 1 then
  if ARGV[2] ~= 'final' then return {0, holder} end
  return logged(tonumber(redis.call('HGET', KEYS[4], 'final_seq') or '0'))
end
local need = tonumber(ARGV[9] or '')
if need and tonumber(redis.call('HGET', KEYS[4], 'next') or '0') < need then return {-1, holder} end
if ARGV[2] == 'final' then
  redis.call('HSET', KEYS[4], 'final', ARGV[1])
  redis.call('EXPIRE', KEYS[4], ARGV[7])
  redis.call('HDEL', KEYS[5], ARGV[6])
else
  redis.call('HSET', KEYS[4], 'next', idx + 1)
  -- Its state lives as long as its frames come (a hash expired or lost in a failover is made again here: never
  -- without a TTL).
  redis.call('EXPIRE', KEYS[4], ARGV[7])
end
-- A session that keeps receiving frames stays resumable: its meta lives as long as its log.
if holder ~= '' then redis.call('EXPIRE', KEYS[3], ARGV[4]) end
local seq = append(KEYS[1], KEYS[2], ARGV[1], ARGV[4], ARGV[5], tonumber(ARGV[8] or '0'))
if ARGV[2] == 'final' then
  redis.call('HSET', KEYS[4], 'final_seq', seq)
else
  -- Indexes a worker skipped get slot 0 (nothing logged there).
  seqs = seqs .. string.rep(string.rep('0', SLOT), idx - math.floor(#seqs / SLOT))
  redis.call('HSET', KEYS[4], 'chunk_seqs', seqs .. string.format('%0' .. SLOT .. '.0f', seq))
end
return {seq, holder}
"""
)

# Admits a request idempotently, enqueues its job and logs its `accepted` frame, in one step.
# KEYS: 1 request hash, 2 jobs stream, 3 session inflight hash, 4 seq, 5 log
# ARGV: 1 job json, 2 session, 3 request id, 4 request ttl s, 5 jobs maxlen, 6 session ttl s, 7 accepted frame body,
#       8 log maxlen, 9 the highest seq the gateway sent on the session's socket
# Returns {'new', entry id, seq} | {'done', final frame body, its session or ''} | {'elsewhere', session}
#       | {'inflight', entry id, seq of its `accepted` frame, job json} (admitted earlier in this same session)
#       | {'inflight', '', '0', ''} (running, but its admission is lost: see below)
# A failover can lose SUBMIT's writes (replication is asynchronous) while the job, sent again by its gateway, runs:
# LOG_FRAME then makes the request's hash again from its frames (`next`, `chunk_seqs`, `final`), without `session`.
# Such a request is finished (`final`) or running (`next`): admitted again, it would run twice and its chunks would be
# numbered again from 0. Its session is unknown, so it is answered as in flight with nothing stored: the gateway sends
# nothing new, and the frames keep coming from the gateway that runs it.
SUBMIT = (
    _APPEND
    + """
local st = redis.call('HMGET', KEYS[1], 'session', 'final', 'next', 'entry', 'accepted', 'job')
local existing = st[1]
if st[2] then return {'done', st[2], existing or ''} end
if existing == ARGV[2] then return {'inflight', st[4] or '', st[5] or '0', st[6] or ''} end
if existing then return {'elsewhere', existing} end
if st[3] then return {'inflight', '', '0', ''} end
local entry = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'm', ARGV[1])
redis.call('HSET', KEYS[1], 'session', ARGV[2], 'job', ARGV[1], 'next', 0, 'entry', entry)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[6])
local seq = append(KEYS[4], KEYS[5], ARGV[7], ARGV[6], ARGV[8], tonumber(ARGV[9] or '0'))
redis.call('HSET', KEYS[1], 'accepted', seq)
return {'new', entry, seq}
"""
)

# Registers a worker for a task unless live workers serve that task with another model configuration.
# KEYS: 1 tasks hash, 2 task workers zset
# ARGV: 1 task, 2 config json, 3 fingerprint, 4 worker id, 5 now ms, 6 expiry ms
# Returns {1, ''} or {0, the registered config}
REGISTER_TASK = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and redis.call('ZCARD', KEYS[2]) > 0 then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and decoded['fingerprint'] ~= ARGV[3] then
    local others = redis.call('ZRANGE', KEYS[2], 0, -1)
    if not (#others == 1 and others[1] == ARGV[4]) then return {0, current} end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[4])
return {1, ''}
"""

# A worker's claims on the jobs it runs, checked against their owner. XCLAIM takes a pending entry from whichever
# consumer holds it, so a worker back from a long pause (GC, SIGSTOP, a partition) would take back jobs another worker
# reclaimed and is running meanwhile, and set their delivery counts over that worker's: both would run them, and a
# count could be lost. Each entry is claimed only if this consumer still owns it. With a count, its delivery count is
# set (RETRYCOUNT); with an idle time, its idle time (a hand-back: reclaimable at once); else it is only refreshed.
# Entries another consumer owns, or no longer pending (acked), are left alone. Returns {ids this consumer owns, ids
# another consumer owns}.
# KEYS: 1 the task's job stream
# ARGV: 1 group, 2 consumer, 3 idle ms (0 = refresh), then pairs: entry id, delivery count ('' = keep it)
CLAIM_OWNED = """
local owned, taken = {}, {}
for i = 4, #ARGV, 2 do
  local id, count = ARGV[i], ARGV[i + 1]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #p > 0 and p[1][2] ~= ARGV[2] then
    taken[#taken + 1] = id
  elseif #p > 0 then
    local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[3]}
    if count ~= '' then
      args[#args + 1] = 'RETRYCOUNT'
      args[#args + 1] = count
    end
    args[#args + 1] = 'JUSTID'
    -- An entry deleted from the stream (trimmed) while pending is dropped by XCLAIM and not returned: not ours to run.
    if #redis.call(unpack(args)) > 0 then owned[#owned + 1] = id end
  end
end
return {owned, taken}
"""

# Declares a task (its configuration) with no live worker, so that gateways which queue requests for workers scaled to
# zero take its requests before any worker has run (a new deployment, or a task added while its workers are at zero).
# Live workers' own registration wins: while any is live, nothing is written.
# KEYS: 1 the tasks hash, 2 the task's workers (sorted by registration expiry)
# ARGV: 1 task, 2 task info json, 3 now (ms)
# Returns 1 if declared, 0 if live workers serve the task.
DECLARE_TASK = """
if redis.call('ZCOUNT', KEYS[2], ARGV[3], '+inf') > 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# Forgets a task no worker will serve again (removed from every worker's configuration): gateways refuse its requests
# `unknown_task` from their next refresh, instead of queueing them for a worker that will never start. While any
# worker is live for it, nothing is removed (the task is still served; a worker of the last deployment may still be
# draining). Its queued jobs stay in their stream (they end `deadline_exceeded` at their gateways).
# KEYS: 1 the tasks hash, 2 the task's workers (sorted by registration expiry)
# ARGV: 1 task, 2 now (ms)
# Returns 1 if forgotten, 0 if it was not registered, -1 if live workers serve it.
FORGET_TASK = """
if redis.call('ZCOUNT', KEYS[2], ARGV[2], '+inf') > 0 then return -1 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

# Removes a task group's consumers that hold no pending job and are gone: idle at least ARGV 2 ms (a live worker reads
# or refreshes its claims every few seconds), or named in ARGV 3 (a worker at its own shutdown). Every worker process
# is a consumer of its own name, so without this each restart, crash and scale-up would leave one behind for good.
# Only consumers with nothing pending: XGROUP DELCONSUMER drops a consumer's pending entries, which would then never
# be reclaimed.
# KEYS: 1 the task's job stream
# ARGV: 1 group, 2 min idle ms, 3 a consumer to remove whatever its idle time ('' for none)
# Returns how many were removed.
PRUNE_CONSUMERS = """
local dropped = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['pending'] == 0 and (f['name'] == ARGV[3] or f['idle'] >= tonumber(ARGV[2])) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    dropped = dropped + 1
  end
end
return dropped
"""

# A gateway takes a session (a new one, or a resume): the session's meta names it, and the session's seq counter is
# raised to at least the resuming client's last seq. A failover can lose the counter's last increments (replication
# is asynchronous) while the client already has those frames. The gateway the client resumed on never numbers at or
# below what it sent (its floor), but a gateway still running one of the session's requests numbers its frames from
# the counter alone, and a frame numbered at or below the client's last seq would be dropped as one it already has.
# One script, so that no gateway sees the session named for its new holder with the counter not yet raised.
# KEYS: 1 session meta, 2 seq; ARGV: 1 identity, 2 gateway id, 3 session ttl s, 4 the client's last seq (0: none)
CLAIM_SESSION = """
redis.call('HSET', KEYS[1], 'identity', ARGV[1], 'gateway', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local floor = tonumber(ARGV[4])
if floor > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') < floor then
  redis.call('SET', KEYS[2], floor, 'EX', ARGV[3])
end
return 1
"""
