"""The session store's Lua scripts: each runs atomically in Redis, on the one cluster slot of its keys.

Every segment's effect is ONE script (APPLY_SCRIPT), so a session is never seen with a vector but no
state, or a state but no score. KEYS and ARGV orders are documented in each script; the key names are
those of moodstream.server.store_keys.
"""

from __future__ import annotations

__all__ = [
    "APPLY_SCRIPT",
    "CLAIM_SCRIPT",
    "END_SCRIPT",
    "FORGET_OWNER_SCRIPT",
    "INTERRUPT_SCRIPT",
    "LOAD_SCRIPT",
    "PRUNE_INDEX_SCRIPT",
    "REPLACE_STATE_SCRIPT",
]

# The "#!lua" line declares the script a write script: under maxmemory it is
# refused before it runs, instead of failing halfway through its writes.

_TTL_LUA = """
local function refresh_ttl(ttl, first, last)
  for i = first, last do
    if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) else redis.call('PERSIST', KEYS[i]) end
  end
end
"""

APPLY_SCRIPT = (
    "#!lua\n"
    + _TTL_LUA
    + """
-- KEYS: 1 session hash, 2 vectors hash, 3 session stream, 4 participant stream, 5 audio hash,
--       6 scorer rows, 7 the participant's session directory
-- ARGV: 1 seq, 2 expected previous seq (-1 = none), 3 vector, 4 state head, 5 score JSON,
--       6 ttl seconds (0 = none), 7 stream maxlen, 8 store audio ('1'/'0'), 9 audio,
--       10 segments, 11 speech_seconds, 12 device id, 13 scorer rows to append ('' = none)
-- Returns {status, applied seq after the call (-1 = none), session offset, participant offset}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unclaimed', -1, '', ''} end
local seq = tonumber(ARGV[1])
local applied = tonumber(redis.call('HGET', KEYS[1], 'applied') or '-1')
if seq <= applied then return {'duplicate', applied, '', ''} end
if redis.call('HEXISTS', KEYS[1], 'ended_at') == 1 then return {'ended', applied, '', ''} end
if seq ~= applied + 1 then return {'gap', applied, '', ''} end
if tonumber(ARGV[2]) ~= applied then return {'conflict', applied, '', ''} end

redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if ARGV[8] == '1' then redis.call('HSET', KEYS[5], ARGV[1], ARGV[9]) end
if ARGV[13] ~= '' then redis.call('APPEND', KEYS[6], ARGV[13]) end
-- One id for both streams, so an offset means the same update in either. The
-- participant stream receives every entry of every session, so its next id
-- is above anything in this session's stream; the fallback only runs if
-- someone deleted the participant stream by hand.
local participant_offset = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'score', ARGV[5])
local offset = redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], participant_offset, 'score', ARGV[5])
if type(offset) == 'table' and offset.err then
  offset = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'score', ARGV[5])
end
redis.call('HSET', KEYS[1], 'applied', ARGV[1], 'state', ARGV[4], 'latest', ARGV[5],
           'latest_offset', offset, 'segments', ARGV[10], 'speech_seconds', ARGV[11],
           'device', ARGV[12])
local identity = redis.call('HMGET', KEYS[1], 'started_at', 'session')
redis.call('ZADD', KEYS[7], identity[1], identity[2])
refresh_ttl(tonumber(ARGV[6]), 1, 7)
return {'applied', seq, offset, participant_offset}
"""
)

CLAIM_SCRIPT = (
    "#!lua\n"
    + _TTL_LUA
    + """
-- KEYS: the six session keys, as in the apply script
-- ARGV: 1 participant, 2 session, 3 model version, 4 device, 5 now, 6 ttl, 7 claim ttl
-- (the keys' expiry until a first segment is applied)
-- Returns {created (0/1), applied, segments, speech_seconds, started_at, ended_at,
--          latest, latest_offset} (missing fields as false).
local created = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'participant', ARGV[1], 'session', ARGV[2],
             'model_version', ARGV[3], 'started_at', ARGV[5])
  created = 1
end
redis.call('HSET', KEYS[1], 'device', ARGV[4])
if redis.call('HEXISTS', KEYS[1], 'applied') == 1 then
  refresh_ttl(tonumber(ARGV[6]), 1, 6)
else
  refresh_ttl(tonumber(ARGV[7]), 1, 6)
end
local fields = redis.call('HMGET', KEYS[1], 'applied', 'segments', 'speech_seconds',
                          'started_at', 'ended_at', 'latest', 'latest_offset')
table.insert(fields, 1, created)
return fields
"""
)

END_SCRIPT = (
    "#!lua\n"
    + _TTL_LUA
    + """
-- KEYS: the session keys; ARGV: 1 now, 2 ttl. Returns 1 if the session exists.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[1], 'ended_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'interrupted_at')
refresh_ttl(tonumber(ARGV[2]), 1, 6)
return 1
"""
)

# A session's fields and scorer rows in one atomic read, so the rows always match the state head. The rows
# are left out when the caller holds the stored state already (server/state_cache.py): the stored head is its
# head, and the rows have its length and end in its last record (O(d) to check; a CRC of all rows is not).
LOAD_SCRIPT = """#!lua flags=no-writes
-- KEYS: the session keys, as in the apply script
-- ARGV: the state the caller holds ('' = none): 1 its head, 2 its rows' length in bytes, 3 its last row record
-- Returns {{applied, state, latest, latest_offset}, rows ('' when left out), 1 if left out else 0}.
local fields = redis.call('HMGET', KEYS[1], 'applied', 'state', 'latest', 'latest_offset')
if ARGV[1] ~= '' and fields[2] == ARGV[1] then
  local length = redis.call('STRLEN', KEYS[6])
  local last = #ARGV[3]
  if length == tonumber(ARGV[2])
     and (last == 0 or redis.call('GETRANGE', KEYS[6], length - last, length - 1) == ARGV[3]) then
    return {fields, '', 1}
  end
end
return {fields, redis.call('GET', KEYS[6]) or '', 0}
"""


# Replaces a scorer state in an older format by its head and rows, only if nothing was applied since it was read.
REPLACE_STATE_SCRIPT = (
    "#!lua\n"
    + _TTL_LUA
    + """
-- KEYS: the session keys; ARGV: 1 applied seq read, 2 state read, 3 new head, 4 rows, 5 ttl
-- Returns 1 if replaced, 0 if another writer moved the session first.
if redis.call('HGET', KEYS[1], 'applied') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[3])
redis.call('DEL', KEYS[6])
if ARGV[4] ~= '' then redis.call('SET', KEYS[6], ARGV[4]) end
refresh_ttl(tonumber(ARGV[5]), 1, #KEYS)
return 1
"""
)

# Drops directory entries whose session record is gone (expired or deleted).
# KEYS: 1 the participant's session directory, 2.. session hashes; ARGV: their session ids.
PRUNE_INDEX_SCRIPT = """#!lua
local removed = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then removed = removed + redis.call('ZREM', KEYS[1], ARGV[i - 1]) end
end
return removed
"""

INTERRUPT_SCRIPT = """#!lua
-- KEYS: 1 session hash; ARGV: 1 now. Marks an open session interrupted; returns 1 if it did.
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'ended_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'interrupted_at', ARGV[1])
return 1
"""

# Deletes an owner key only if it still names this participant.
FORGET_OWNER_SCRIPT = """#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
