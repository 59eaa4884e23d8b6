"""Session state in Redis: segment vectors, scorer state, applied seq, score streams.

Servers hold no session state; everything a replica needs to take over a
session lives here. Every segment's effect is ONE atomic Lua script, so a
session is never seen with a vector but no state, or a state but no score.
The same code runs against a single server and a Redis Cluster.

Key schema
----------
P = participant id, S = session id, V = model version (ids are
``[A-Za-z0-9_.-]{1,64}``, versions ``[A-Za-z0-9_.+-]{1,128}``, so none holds
``:``, ``{``, ``}`` or a glob character)::

    ms:{p:P}:V:s:S            hash    participant, session, model_version,
                                      device, started_at, ended_at (once
                                      ended), applied (last applied seq),
                                      state (scorer state head: O(d),
                                      rewritten per segment), segments,
                                      speech_seconds, latest (score JSON),
                                      latest_offset, interrupted_at (while
                                      its last stream broke off without End)
    ms:{p:P}:V:s:S:vectors    hash    seq -> segment vector (float32 bytes)
    ms:{p:P}:V:s:S:audio      hash    seq -> PCM s16le (only with store_audio)
    ms:{p:P}:V:s:S:rows       string  the scorer's rows, one fixed-size record
                                      appended per segment (APPEND)
    ms:{p:P}:V:s:S:updates    stream  one entry per applied segment: score=JSON
    ms:{p:P}:updates          stream  the same entries for all of P's sessions,
                                      of every model version (each entry
                                      names its model_version)
    ms:{p:P}:V:sessions       zset    P's session directory: session id ->
                                      started_at; the apply script adds a
                                      session with its first segment
    ms:{directory}:V          zset    participants with an applied segment
                                      (score 0, read in lexical order)
    ms:session:{S}:owner      string  P; set once (SET NX), so a session id
                                      can never be taken over by another
                                      participant
    ms:session:{S}:model      string  V, the model version the session
                                      started under; set once (SET NX), so
                                      every replica keeps the session on it
    ms:{versions}             set     every model version that stored a
                                      session (for the session directory;
                                      its TTL is refreshed like the
                                      participant directory's)

The hash tag ``{p:P}`` puts a participant's sessions and its score stream on
one cluster slot, which is what lets one script update the session and the
participant stream atomically. The owner key is tagged by session instead,
because it must be found from a session id alone; it is only touched on
claim, the first segment, end and forget, never inside the apply script.
The participant directory holds every participant on one slot; it is
touched with a session's first segment and its end. The model version in
every key keeps a new model from ever mixing with an old model's vectors or
state. Every key of a session gets a TTL (default 30 days, refreshed on every
write; 0 = keep forever). Until a session's first segment is applied its
keys (the claim: session record and owner key) live only
CLAIM_TTL_SECONDS, so refused or abandoned input leaves nothing for long.

The score JSON mirrors the ``ScoreUpdate`` message of moodstream.v1 minus
``offset`` (the stream entry id, added on read), ``notice`` and the session state.

Durability: an apply is acknowledged by Redis after the script ran. With
``appendonly yes`` + ``appendfsync always`` it is on disk before the reply;
with ``everysec`` up to a second of applies can be lost if the machine (not
just the Redis process) dies.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ResponseError

from moodstream.ids import DEVICE_PATTERN, ID_PATTERN
from moodstream.server import metrics
from moodstream.v1 import moodstream_pb2 as pb

__all__ = [
    "ApplyResult",
    "ApplyStatus",
    "SessionKeys",
    "SessionNotFoundError",
    "SessionOwnershipError",
    "SessionCursor",
    "SessionRecord",
    "SessionSummary",
    "SessionSnapshot",
    "SessionStore",
    "UpdateBatch",
    "connect",
]

DEFAULT_TTL_SECONDS = 30 * 24 * 3600
CLAIM_TTL_SECONDS = 600
DEFAULT_STREAM_MAXLEN = 10_000
MAX_READ_COUNT = 10_000
MAX_PAGE_SIZE = 1000
DIRECTORY_BATCH = 200
# Lua numbers are doubles: seqs above 2**53 would silently lose precision.
MAX_SEQ = 2**53 - 1
MAX_STREAM_ID_PART = 2**64 - 1

MODEL_VERSION_PATTERN = re.compile(r"[A-Za-z0-9_.+-]{1,128}")
OFFSET_PATTERN = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")

# A stored score holds ScoreUpdate's fields but these: the offset is its stream entry id (added on read),
# and the notice and session state are the server's to add when it answers.
UNSTORED_SCORE_FIELDS = frozenset({"offset", "notice", "session_state", "session_state_since_unix"})
SCORE_FIELDS = tuple(field.name for field in pb.ScoreUpdate.DESCRIPTOR.fields
                     if field.name not in UNSTORED_SCORE_FIELDS)
REQUIRED_SCORE_FIELDS = ("probability", "above_threshold", "threshold", "speech_seconds")

AnyRedis = aioredis.Redis | RedisCluster
log = logging.getLogger("moodstream.server")


class SessionOwnershipError(PermissionError):
    """The session id is already owned by another participant."""


class SessionNotFoundError(LookupError):
    """No participant owns this session id (never claimed, expired, or forgotten)."""


class ApplyStatus(enum.StrEnum):
    APPLIED = "applied"  # written; offset names the new stream entry
    DUPLICATE = "duplicate"  # seq <= applied seq: already applied (maybe by this very writer
    #                          before a dropped connection); nothing written
    GAP = "gap"  # seq > applied seq + 1: an earlier segment is missing; nothing written
    CONFLICT = "conflict"  # seq == applied + 1 but the writer's state was built on another
    #                        seq than the applied one (stale writer); nothing written
    UNCLAIMED = "unclaimed"  # no session record (never claimed, expired, forgotten)
    ENDED = "ended"  # the session was ended; no new segments accepted


@dataclass(frozen=True)
class ApplyResult:
    status: ApplyStatus
    applied_seq: int | None  # the session's last applied seq after this call
    offset: str | None = None  # session stream entry id (ScoreUpdate.offset); APPLIED only
    participant_offset: str | None = None  # participant stream entry id (normally == offset)
    score: dict[str, Any] | None = None  # the stored update, offset included; APPLIED only

    @property
    def applied(self) -> bool:
        return self.status is ApplyStatus.APPLIED

    @property
    def duplicate(self) -> bool:
        return self.status is ApplyStatus.DUPLICATE


@dataclass(frozen=True)
class SessionRecord:
    session_id: str
    participant_id: str
    device_id: str
    model_version: str
    created: bool  # True when this claim started the session
    started_at: float
    applied_seq: int | None
    segments: int
    speech_seconds: float
    ended_at: float | None
    latest: dict[str, Any] | None

    @property
    def ended(self) -> bool:
        return self.ended_at is not None


OPEN, ENDED, INTERRUPTED = "open", "ended", "interrupted"
SESSION_STATES = (OPEN, ENDED, INTERRUPTED)


class SessionState(NamedTuple):
    ended_at: float | None        # End received (server time)
    interrupted_at: float | None  # the last stream closed without End (cleared when a stream resumes)

    @property
    def name(self) -> str:
        """OPEN, ENDED or INTERRUPTED (an ended session is ended, whatever else it was)."""
        if self.ended_at is not None:
            return ENDED
        return INTERRUPTED if self.interrupted_at is not None else OPEN

    @property
    def since(self) -> float | None:
        """Server time the session entered its state (None while open)."""
        return self.ended_at if self.ended_at is not None else self.interrupted_at


@dataclass(frozen=True)
class SessionSummary:
    """One entry of the session directory (mirrors SessionSummary of moodstream.v1)."""

    session_id: str
    participant_id: str
    device_id: str
    model_version: str
    started_unix: float
    last_update_unix: float  # time of the latest score
    state: SessionState
    segments: int
    speech_seconds: float
    latest: dict[str, Any] | None


class SessionCursor(NamedTuple):
    """Where a directory page ended: the last session listed."""

    participant_id: str
    started_unix: float
    session_id: str


class SessionSnapshot(NamedTuple):
    applied_seq: int | None
    state: bytes | None  # the scorer state head (or a whole state in the format before heads and rows)
    latest: dict[str, Any] | None
    # every scorer row record appended so far, in order; None when the stored state is the one `known`
    # to load(), so the rows were not read
    rows: bytes | None = b""


@dataclass(frozen=True)
class UpdateBatch:
    updates: list[dict[str, Any]]  # score dicts, each with its "offset"
    next_offset: str  # pass as after_offset to continue exactly after this batch
    trimmed: bool  # the stream cap removed updates newer than after_offset: the reader missed
    #                them (see _missed_removed_entries for the one boundary case)


@dataclass(frozen=True)
class SessionKeys:
    """All keys of one session under one model version (see the module docstring)."""

    session: str
    vectors: str
    audio: str
    updates: str
    participant_updates: str
    owner: str
    index: str  # the participant's session directory (shared by their sessions)
    rows: str
    model: str  # the session's model version (set by the server that starts the session)

    @classmethod
    def build(cls, participant_id: str, session_id: str, model_version: str) -> SessionKeys:
        base = f"{participant_prefix(participant_id)}{model_version}"
        session = f"{base}:s:{session_id}"
        return cls(
            session=session,
            vectors=f"{session}:vectors",
            audio=f"{session}:audio",
            updates=f"{session}:updates",
            # One stream for every version, so a participant's subscriber follows a rollout.
            participant_updates=participant_updates_key(participant_id),
            owner=owner_key(session_id),
            index=f"{base}:sessions",
            rows=f"{session}:rows",
            model=session_model_key(session_id),
        )

    def script_keys(self) -> list[str]:
        """The keys the apply script touches, in its KEYS order; all on one slot."""
        return [self.session, self.vectors, self.updates, self.participant_updates, self.audio, self.rows]

    def all(self) -> list[str]:
        return [*self.script_keys(), self.owner]


def participant_prefix(participant_id: str) -> str:
    return f"ms:{{p:{participant_id}}}:"


def owner_key(session_id: str) -> str:
    return f"ms:session:{{{session_id}}}:owner"


def session_model_key(session_id: str) -> str:
    return f"ms:session:{{{session_id}}}:model"


def participant_updates_key(participant_id: str) -> str:
    return f"{participant_prefix(participant_id)}updates"


VERSIONS_KEY = "ms:{versions}"


def directory_key(model_version: str) -> str:
    return f"{DIRECTORY_PREFIX}{model_version}"


DIRECTORY_PREFIX = "ms:{directory}:"


# -- Lua ----------------------------------------------------------------
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


class KnownState(NamedTuple):
    """A scorer state the caller holds, as load() compares it with the stored one."""

    head: bytes
    rows_length: int   # bytes of all its row records
    last_row: bytes    # its last row record (b"" without rows)

    @classmethod
    def of(cls, head: bytes, state) -> KnownState:
        """What the store holds for a ScorerState `state` stored with `head`."""
        last_row = state.row_bytes(state.rows - 1) if state.rows else b""
        return cls(head, state.rows * len(last_row), last_row)


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


# How long the store's client rides out a Redis that is unreachable, restarting or loading, by default.
DEFAULT_RETRY_SECONDS = 30.0
RETRY_BACKOFF = {"base": 0.025, "cap": 1.0}  # waits of 50 ms, doubling, at most 1 s


class _CountedBackoff(ExponentialBackoff):
    """RETRY_BACKOFF that counts, and logs, each failed Redis call it waits after."""

    def compute(self, failures: int) -> float:
        delay = super().compute(failures)
        metrics.REDIS_ERRORS.inc()
        log.warning("redis call failed (attempt %d); retrying in %.2f s", failures, delay)
        return delay


def redis_retry(seconds: float) -> Retry:
    """redis-py's Retry for connection errors and timeouts (a Redis that is loading included), retrying
    with RETRY_BACKOFF for `seconds` of waiting in all."""
    waits, retries, waited = ExponentialBackoff(**RETRY_BACKOFF), 0, 0.0
    while waited < seconds:
        retries += 1
        waited += waits.compute(retries)
    return Retry(_CountedBackoff(**RETRY_BACKOFF), retries)


def connect(url: str, *, cluster: bool = False, retry_seconds: float = DEFAULT_RETRY_SECONDS,
            **options: Any) -> AnyRedis:
    """An asyncio Redis client for SessionStore (a RedisCluster client if cluster=True) whose every call
    rides out `retry_seconds` of Redis being unreachable (0: no retry).

    Responses stay bytes (state and vectors are binary), so decode_responses
    is refused.
    """
    if options.get("decode_responses"):
        raise ValueError("SessionStore needs raw bytes responses; do not set decode_responses")
    options.setdefault("socket_connect_timeout", 5)
    options.setdefault("retry", redis_retry(retry_seconds))
    if cluster:
        return RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)


class SessionStore:
    """Session state of one model version in Redis (single server or cluster).

    Args:
        client: from connect(); the caller closes it.
        model_version: part of every key.
        ttl_seconds: expiry of every key of a session, refreshed on each write;
            0 keeps data until forget_participant().
        stream_maxlen: approximate cap (MAXLEN ~) of every score stream.
        store_audio: keep each segment's PCM too (off by default: privacy).
        claim_ttl_seconds: expiry of a claimed session's keys until its first
            segment is applied (at most ttl_seconds, unless that is 0).
    """

    def __init__(
        self,
        client: AnyRedis,
        *,
        model_version: str,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        store_audio: bool = False,
        claim_ttl_seconds: int = CLAIM_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_pattern("model_version", model_version, MODEL_VERSION_PATTERN)
        if not isinstance(ttl_seconds, int) or ttl_seconds < 0:
            raise ValueError(f"ttl_seconds must be an int >= 0 (0 = no expiry), not {ttl_seconds!r}")
        if not isinstance(stream_maxlen, int) or stream_maxlen < 1:
            raise ValueError(f"stream_maxlen must be an int >= 1, not {stream_maxlen!r}")
        self.client = client
        self.model_version = model_version
        self.ttl_seconds = ttl_seconds
        self.stream_maxlen = stream_maxlen
        self.store_audio = store_audio
        if not isinstance(claim_ttl_seconds, int) or claim_ttl_seconds < 1:
            raise ValueError(f"claim_ttl_seconds must be an int >= 1, not {claim_ttl_seconds!r}")
        self.claim_ttl_seconds = min(claim_ttl_seconds, ttl_seconds) if ttl_seconds else claim_ttl_seconds
        self._clock = clock
        # register_script: EVALSHA, and on NOSCRIPT (a restarted Redis, a cluster node that has not seen the
        # script yet) SCRIPT LOAD and EVALSHA again.
        self._apply = client.register_script(APPLY_SCRIPT)
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._end = client.register_script(END_SCRIPT)
        self._forget_owner = client.register_script(FORGET_OWNER_SCRIPT)
        self._prune_index = client.register_script(PRUNE_INDEX_SCRIPT)
        self._interrupt = client.register_script(INTERRUPT_SCRIPT)
        self._load = client.register_script(LOAD_SCRIPT)
        self._replace_state = client.register_script(REPLACE_STATE_SCRIPT)

    @property
    def is_cluster(self) -> bool:
        return isinstance(self.client, RedisCluster)

    def keys(self, participant_id: str, session_id: str) -> SessionKeys:
        _check_pattern("participant_id", participant_id, ID_PATTERN)
        _check_pattern("session_id", session_id, ID_PATTERN)
        return SessionKeys.build(participant_id, session_id, self.model_version)

    # -- sessions -------------------------------------------------------

    async def pin_model_version(self, session_id: str) -> str:
        """Record this store's model version as the session's, unless one is recorded; returns the session's.

        Until the session's first segment the record lives CLAIM_TTL_SECONDS, then as long as its data.
        """
        _check_pattern("session_id", session_id, ID_PATTERN)
        previous = await self.client.set(session_model_key(session_id), self.model_version, nx=True, get=True,
                                         ex=self.claim_ttl_seconds)
        return self.model_version if previous is None else _text(previous)

    async def session_model_version(self, session_id: str) -> str | None:
        """The model version a session started under (None: unknown, or started before versions were recorded)."""
        _check_pattern("session_id", session_id, ID_PATTERN)
        version = await self.client.get(session_model_key(session_id))
        return _text(version) if version is not None else None

    async def stored_model_versions(self, scan: bool = False) -> set[str]:
        """Every model version that has stored a session in this Redis.

        scan: also find versions of sessions stored before versions were recorded, by SCANning for their
        participant directories (every key is visited: for offline work such as an export).
        """
        versions = {_text(member) for member in await self.client.smembers(VERSIONS_KEY)}
        if scan:
            versions |= {key[len(DIRECTORY_PREFIX):] for key in await self._scan(DIRECTORY_PREFIX + "*")}
        return versions

    async def session_owner(self, session_id: str) -> str | None:
        _check_pattern("session_id", session_id, ID_PATTERN)
        owner = await self.client.get(owner_key(session_id))
        return owner.decode() if owner is not None else None

    async def claim_session(self, session_id: str, participant_id: str, device_id: str = "") -> SessionRecord:
        """Start or resume a session; raises SessionOwnershipError if another participant owns it."""
        keys = self.keys(participant_id, session_id)
        _check_pattern("device_id", device_id, DEVICE_PATTERN)
        previous = await self.client.set(keys.owner, participant_id, nx=True, get=True, ex=self.claim_ttl_seconds)
        if previous is not None and previous.decode() != participant_id:
            raise SessionOwnershipError(f"session {session_id!r} belongs to another participant")
        now = self._clock()
        reply = await self._claim(
            keys.script_keys(),
            [participant_id, session_id, self.model_version, device_id, repr(now), self.ttl_seconds,
             self.claim_ttl_seconds],
        )
        created, applied, segments, speech, started_at, ended_at, latest, latest_offset = reply
        if _optional_int(applied) is not None:
            await self._settle_claim(keys, participant_id)
        elif previous is not None:
            await self.client.expire(keys.owner, self.claim_ttl_seconds)
        return SessionRecord(
            session_id=session_id,
            participant_id=participant_id,
            device_id=device_id,
            model_version=self.model_version,
            created=bool(created),
            started_at=float(started_at),
            applied_seq=_optional_int(applied),
            segments=int(segments or 0),
            speech_seconds=float(speech or 0.0),
            ended_at=float(ended_at) if ended_at else None,
            latest=_latest(latest, latest_offset),
        )

    async def _settle_claim(self, keys: SessionKeys, participant_id: str) -> None:
        """A session with a segment: its owner key lives as long as its data, and it is in the directory."""
        directory = directory_key(self.model_version)
        pipeline = self.client.pipeline(transaction=False)  # one round trip (a cluster: one per node)
        pipeline.zadd(directory, {participant_id: 0})
        pipeline.sadd(VERSIONS_KEY, self.model_version)
        for key in (keys.owner, keys.model, directory, VERSIONS_KEY):
            if self.ttl_seconds:
                pipeline.expire(key, self.ttl_seconds)
            else:
                pipeline.persist(key)
        await pipeline.execute()

    async def session_state(self, session_id: str, participant_id: str | None = None) -> SessionState:
        """When the session ended or was interrupted (Nones while it is open or unknown)."""
        _check_pattern("session_id", session_id, ID_PATTERN)
        participant = await self._participant_of(session_id, participant_id)
        if participant is None:
            return SessionState(None, None)
        ended, interrupted = await self.client.hmget(self.keys(participant, session_id).session,
                                                     ["ended_at", "interrupted_at"])
        return SessionState(float(ended) if ended else None, float(interrupted) if interrupted else None)

    async def mark_interrupted(self, session_id: str, participant_id: str) -> bool:
        """Record that the session's stream closed without End; a later stream clears it."""
        keys = self.keys(participant_id, session_id)
        return bool(await self._interrupt([keys.session], [repr(self._clock())]))

    async def clear_interrupted(self, session_id: str, participant_id: str) -> None:
        await self.client.hdel(self.keys(participant_id, session_id).session, "interrupted_at")

    async def _refresh_owner_ttl(self, owner: str) -> None:
        if self.ttl_seconds:
            await self.client.expire(owner, self.ttl_seconds)
        else:
            await self.client.persist(owner)

    async def _participant_of(self, session_id: str, participant_id: str | None) -> str | None:
        if participant_id is not None:
            _check_pattern("participant_id", participant_id, ID_PATTERN)
            return participant_id
        return await self.session_owner(session_id)

    async def load(self, session_id: str, participant_id: str | None = None, *,
                   known: KnownState | None = None) -> SessionSnapshot:
        """(applied seq, scorer state head, latest score, scorer rows) of a session; Nones if unknown.

        participant_id, when the caller already knows the owner, saves a
        lookup; a wrong one finds nothing (keys are per participant).
        known: a state the caller holds; if the stored head is its very bytes
        and the rows end as its rows do, the rows are not read (rows is None).
        """
        _check_pattern("session_id", session_id, ID_PATTERN)
        participant = await self._participant_of(session_id, participant_id)
        if participant is None:
            return SessionSnapshot(None, None, None)
        keys = self.keys(participant, session_id)
        (applied, state, latest, latest_offset), rows, head_known = await self._load(
            keys.script_keys(), [b"", 0, b""] if known is None else [bytes(known.head), known.rows_length,
                                                                    bytes(known.last_row)])
        return SessionSnapshot(_optional_int(applied), state or None, _latest(latest, latest_offset),
                               None if int(head_known) else rows or b"")

    async def replace_state(self, session_id: str, participant_id: str, applied_seq: int, old_state: bytes,
                            head: bytes, rows: bytes) -> bool:
        """Swap a state read by load() for its head and rows; False if a segment was applied meanwhile."""
        keys = self.keys(participant_id, session_id)
        _check_seq("applied_seq", applied_seq)
        replaced = await self._replace_state(
            keys.script_keys(),
            [applied_seq, _bytes("old_state", old_state), _bytes("head", head), bytes(rows), self.ttl_seconds])
        return bool(replaced)

    async def latest_score(self, session_id: str, participant_id: str | None = None) -> dict[str, Any] | None:
        _check_pattern("session_id", session_id, ID_PATTERN)
        participant = await self._participant_of(session_id, participant_id)
        if participant is None:
            return None
        # Two fields, not load(): a reader never needs the scorer's rows.
        latest, offset = await self.client.hmget(self.keys(participant, session_id).session, "latest", "latest_offset")
        return _latest(latest, offset)

    async def end_session(self, session_id: str, participant_id: str | None = None) -> bool:
        """Mark a session ended (no more segments accepted); data stays until its TTL.

        Returns False if there is no such session.
        """
        _check_pattern("session_id", session_id, ID_PATTERN)
        participant = await self._participant_of(session_id, participant_id)
        if participant is None:
            return False
        keys = self.keys(participant, session_id)
        found = await self._end(keys.script_keys(), [repr(self._clock()), self.ttl_seconds])
        if found:
            await self._settle_claim(keys, participant)
        return bool(found)

    # -- the hot path ---------------------------------------------------

    async def apply_segment(
        self,
        session_id: str,
        participant_id: str,
        seq: int,
        vector: bytes,
        state: bytes,
        score: Mapping[str, Any],
        expected_prev_seq: int | None,
        *,
        audio: bytes | None = None,
        state_rows: bytes = b"",
    ) -> ApplyResult:
        """Store one scored segment atomically, exactly once per (session, seq).

        `state` is the scorer state (head) after this segment, computed from
        the state at `expected_prev_seq` (None: from the initial state), and
        `state_rows` what this segment appends to the scorer's rows. The
        write happens only if the session's applied seq is exactly
        `expected_prev_seq` and `seq` is the next one; see ApplyStatus for
        what each refusal means. `audio` is kept only with store_audio.
        """
        keys = self.keys(participant_id, session_id)
        _check_seq("seq", seq)
        previous = -1 if expected_prev_seq is None else expected_prev_seq
        if expected_prev_seq is not None:
            _check_seq("expected_prev_seq", expected_prev_seq)
        vector = _bytes("vector", vector)
        if len(vector) % 4:
            raise ValueError(f"vector must be float32 bytes (a multiple of 4), got {len(vector)} bytes")
        state = _bytes("state", state)
        keep_audio = self.store_audio and audio is not None
        audio_bytes = _bytes("audio", audio) if keep_audio else b""
        update = self._score_update(score, session_id, participant_id, seq)
        payload = json.dumps(update, separators=(",", ":"), allow_nan=False)

        reply = await self._apply(
            [*keys.script_keys(), keys.index],
            [
                seq,
                previous,
                vector,
                state,
                payload,
                self.ttl_seconds,
                self.stream_maxlen,
                "1" if keep_audio else "0",
                audio_bytes,
                update["segments"],
                repr(update["speech_seconds"]),
                update["device_id"],
                bytes(state_rows),
            ],
        )
        status, applied_seq, offset, participant_offset = reply
        status = ApplyStatus(_text(status))
        applied_seq = None if int(applied_seq) < 0 else int(applied_seq)
        if status is not ApplyStatus.APPLIED:
            return ApplyResult(status, applied_seq)
        offset, participant_offset = _text(offset), _text(participant_offset)
        if seq == 0:
            await self._settle_claim(keys, participant_id)
        return ApplyResult(status, applied_seq, offset, participant_offset, {**update, "offset": offset})

    def _score_update(self, score: Mapping[str, Any], session_id: str, participant_id: str, seq: int) -> dict:
        unknown = set(score) - set(SCORE_FIELDS)
        if unknown:
            raise ValueError(f"unknown score fields {sorted(unknown)}; allowed: {', '.join(SCORE_FIELDS)}")
        missing = [name for name in REQUIRED_SCORE_FIELDS if name not in score]
        if missing:
            raise ValueError(f"score is missing {', '.join(missing)}")
        # Identity fields are the store's to set: a caller can confirm them, not change them.
        authoritative = {
            "session_id": session_id,
            "participant_id": participant_id,
            "seq": seq,
            # Seqs start at 0 and gaps are refused, so seq n is the (n+1)-th segment.
            "segments": seq + 1,
            "model_version": self.model_version,
        }
        for name, value in authoritative.items():
            if name in score and score[name] != value:
                raise ValueError(f"score[{name!r}] is {score[name]!r} but the store has {value!r}")
        probability = _finite("probability", score["probability"])
        threshold = _finite("threshold", score["threshold"])
        speech_seconds = _finite("speech_seconds", score["speech_seconds"])
        if not 0.0 <= probability <= 1.0 or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"probability ({probability}) and threshold ({threshold}) must lie in [0, 1]")
        start_seconds = _finite("start_seconds", score.get("start_seconds", 0.0))
        if speech_seconds < 0 or start_seconds < 0:
            raise ValueError(f"speech_seconds ({speech_seconds}) and start_seconds ({start_seconds}) must be >= 0")
        above = score["above_threshold"]
        evidence = score.get("evidence_sufficient", True)
        if not isinstance(evidence, bool):
            raise ValueError(f"evidence_sufficient must be a bool, not {evidence!r}")
        if not isinstance(above, bool) or above != (evidence and probability >= threshold):
            raise ValueError(
                f"above_threshold must be the bool evidence_sufficient and probability >= threshold "
                f"({evidence} and {probability} >= {threshold}), not {above!r}"
            )
        device_id = score.get("device_id", "")
        _check_pattern("device_id", device_id, DEVICE_PATTERN)
        time_unix = _finite("time_unix", score.get("time_unix", self._clock()))
        return {
            **authoritative,
            "probability": probability,
            "above_threshold": above,
            "evidence_sufficient": evidence,
            "threshold": threshold,
            "time_unix": time_unix,
            "device_id": device_id,
            "speech_seconds": speech_seconds,
            "start_seconds": start_seconds,
        }

    async def segment_vectors(self, session_id: str, participant_id: str | None = None) -> list[bytes]:
        """The session's segment vectors in seq order (float32 bytes)."""
        return list((await self._seq_hash(session_id, participant_id, "vectors")).values())

    async def vectors_by_seq(self, session_id: str, participant_id: str | None = None) -> dict[int, bytes]:
        """The session's segment vectors (float32 bytes) by seq, in seq order."""
        return await self._seq_hash(session_id, participant_id, "vectors")

    async def segment_audio(self, session_id: str, participant_id: str | None = None) -> dict[int, bytes]:
        """Stored PCM by seq (empty unless the store was run with store_audio)."""
        return await self._seq_hash(session_id, participant_id, "audio")

    async def _seq_hash(self, session_id: str, participant_id: str | None, which: str) -> dict[int, bytes]:
        _check_pattern("session_id", session_id, ID_PATTERN)
        participant = await self._participant_of(session_id, participant_id)
        if participant is None:
            return {}
        raw = await self.client.hgetall(getattr(self.keys(participant, session_id), which))
        return {seq: raw[key] for seq, key in sorted((int(key), key) for key in raw)}

    # -- score streams --------------------------------------------------

    async def read_updates(
        self,
        session_id: str | None = None,
        participant_id: str | None = None,
        after_offset: str = "",
        block_ms: int = 0,
        count: int = 100,
    ) -> UpdateBatch:
        """Score updates after `after_offset`, oldest first, for Subscribe.

        Target: session_id (that session's stream) or participant_id alone
        (all of the participant's sessions). With both, participant_id is
        taken as the session's owner and saves a lookup.
        after_offset: "" from the beginning, "$" only updates newer than
        now, otherwise an offset from an earlier update or next_offset.
        block_ms: wait up to this long for the first update when none is
        there yet; 0 returns at once. (Redis's "block forever" is not offered:
        loop instead, so the caller can notice cancellation.)
        Raises SessionNotFoundError for a session nobody owns and ValueError
        for a malformed offset or target.
        """
        if not isinstance(block_ms, int) or block_ms < 0:
            raise ValueError(f"block_ms must be an int >= 0, not {block_ms!r}")
        if not isinstance(count, int) or not 1 <= count <= MAX_READ_COUNT:
            raise ValueError(f"count must be an int in 1..{MAX_READ_COUNT}, not {count!r}")
        after = parse_offset(after_offset)
        stream = await self._stream_key(session_id, participant_id)

        info = await self._stream_info(stream)
        if after == "$":
            after = info.get("last-generated-id", "0-0")
        trimmed = _missed_removed_entries(after, info)

        reply = await self.client.xread({stream: after}, count=count, block=block_ms or None)
        task = asyncio.current_task()
        if block_ms and task is not None and task.cancelling():
            # A task cancelled during a blocking XREAD can get an empty reply instead of its
            # CancelledError (redis-py drops it); re-raise it, or a Subscribe loop never ends.
            raise asyncio.CancelledError()
        updates = [_decode_entry(entry_id, fields) for entry_id, fields in _stream_entries(reply)]
        next_offset = updates[-1]["offset"] if updates else after
        return UpdateBatch(updates, next_offset, trimmed)

    async def _stream_key(self, session_id: str | None, participant_id: str | None) -> str:
        if session_id is None:
            if participant_id is None:
                raise ValueError("read_updates needs a session_id or a participant_id")
            _check_pattern("participant_id", participant_id, ID_PATTERN)
            return participant_updates_key(participant_id)
        _check_pattern("session_id", session_id, ID_PATTERN)
        participant = await self._participant_of(session_id, participant_id)
        if participant is None:
            raise SessionNotFoundError(f"no session {session_id!r}")
        return self.keys(participant, session_id).updates

    async def _stream_info(self, stream: str) -> dict[str, str]:
        try:
            info = await self.client.xinfo_stream(stream)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return {}
            raise
        return {
            name: _text(value) if isinstance(value, (bytes, str)) else value
            for name, value in info.items()
            if isinstance(value, (bytes, str, int))
        }

    # -- the session directory ---------------------------------------------

    async def list_sessions(
        self,
        participants: list[str] | None,
        *,
        states: Iterable[str] | None = None,
        active_after: float = 0.0,
        active_before: float = 0.0,
        page_size: int = 100,
        cursor: SessionCursor | None = None,
    ) -> tuple[list[SessionSummary], SessionCursor | None]:
        """One page of sessions and the cursor of the next page (None on the last).

        participants: whose sessions (None = every participant in the
        directory). Order: participant id, then newest start first.
        states: only sessions in these states (OPEN, ENDED, INTERRUPTED;
        None or empty = every state). active_after / active_before (Unix
        seconds, 0 = unbounded): sessions whose latest score is at or after
        active_after and that started at or before active_before.
        """
        wanted = set(states or SESSION_STATES)
        if not wanted <= set(SESSION_STATES):
            raise ValueError(f"states must be among {SESSION_STATES}, not {sorted(wanted)!r}")
        if not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be an int in 1..{MAX_PAGE_SIZE}, not {page_size!r}")
        found: list[SessionSummary] = []
        async for participant in self._directory_from(participants, cursor.participant_id if cursor else None):
            after_cursor = cursor if cursor and cursor.participant_id == participant else None
            async for summary in self._participant_sessions(participant, after_cursor, active_before):
                if summary.state.name not in wanted:
                    continue
                if active_after and summary.last_update_unix < active_after:
                    continue
                if len(found) == page_size:
                    last = found[-1]
                    return found, SessionCursor(last.participant_id, last.started_unix, last.session_id)
                found.append(summary)
        return found, None

    async def _directory_from(self, participants: list[str] | None, first: str | None):
        """Participant ids in lexical order, from `first` (inclusive) on."""
        if participants is not None:
            for participant in sorted(set(participants)):
                _check_pattern("participant_id", participant, ID_PATTERN)
                if first is None or participant >= first:
                    yield participant
            return
        start = f"[{first}" if first else "-"
        directory = directory_key(self.model_version)
        while True:
            batch = [_text(member) for member in
                     await self.client.zrangebylex(directory, start, "+", start=0, num=DIRECTORY_BATCH)]
            for participant in batch:
                yield participant
            if len(batch) < DIRECTORY_BATCH:
                return
            start = f"({batch[-1]}"

    async def _participant_sessions(self, participant: str, cursor: SessionCursor | None, active_before: float):
        """A participant's sessions, newest start first, strictly after `cursor`."""
        index = f"{participant_prefix(participant)}{self.model_version}:sessions"
        newest = "+inf"
        if active_before:
            newest = repr(active_before)
        if cursor is not None:
            newest = repr(min(cursor.started_unix, active_before or math.inf))
        offset = 0
        while True:
            entries = await self.client.zrevrangebyscore(index, newest, "-inf", start=offset, num=DIRECTORY_BATCH,
                                                         withscores=True)
            candidates = []
            for member, started in entries:
                session_id = _text(member)
                if cursor is not None and (started, session_id) >= (cursor.started_unix, cursor.session_id):
                    continue  # at or before the cursor in this order (ties on start: session id descending)
                candidates.append((session_id, started))
            summaries, pruned = await self._summaries(participant, index, candidates)
            for summary in summaries:
                yield summary
            if len(entries) < DIRECTORY_BATCH:
                return
            offset += len(entries) - pruned  # pruned entries left the set: the rest moved up

    async def _summaries(self, participant: str, index: str, candidates) -> tuple[list[SessionSummary], int]:
        """Summaries of (session id, start) candidates, and how many stale entries were pruned."""
        fields = ("device", "ended_at", "interrupted_at", "segments", "speech_seconds", "latest", "latest_offset")
        if not candidates:
            return [], 0
        pipeline = self.client.pipeline(transaction=False)  # one round trip per batch, on one slot
        for session_id, _ in candidates:
            pipeline.hmget(self.keys(participant, session_id).session, fields)
        replies = await pipeline.execute()
        summaries, gone = [], []
        for (session_id, started), reply in zip(candidates, replies):
            device, ended_at, interrupted_at, segments, speech, latest, offset = reply
            if device is None:  # every record has a device field (maybe empty): the record is gone
                gone.append(session_id)
                continue
            score = _latest(latest, offset)
            summaries.append(SessionSummary(
                session_id=session_id, participant_id=participant, device_id=_text(device or b""),
                model_version=self.model_version, started_unix=started,
                state=SessionState(float(ended_at) if ended_at else None,
                                   float(interrupted_at) if interrupted_at else None),
                segments=int(segments or 0),
                speech_seconds=float(speech or 0.0),
                last_update_unix=float(score["time_unix"]) if score else started, latest=score))
        pruned = 0
        if gone:
            records = [self.keys(participant, session_id).session for session_id in gone]
            pruned = int(await self._prune_index([index, *records], gone))
        return summaries, pruned

    # -- privacy ----------------------------------------------------------

    async def forget_participant(self, participant_id: str) -> int:
        """Delete every key of a participant, all model versions; returns how many.

        Scans every master (in a cluster the hash tag keeps them on one slot,
        but a slot can be mid-migration between two masters), then deletes
        the owner keys of the sessions found, if they still name this
        participant.
        """
        _check_pattern("participant_id", participant_id, ID_PATTERN)
        prefix = participant_prefix(participant_id)
        found = await self._scan(prefix + "*")
        session_ids = {_session_id_of(key[len(prefix):]) for key in found} - {None}

        deleted = 0
        for batch in _batches(sorted(found), 500):
            deleted += await self._delete_same_slot(batch)
        for session_id in sorted(session_ids):
            owned = int(await self._forget_owner([owner_key(session_id)], [participant_id]))
            if owned:
                deleted += owned + int(await self.client.delete(session_model_key(session_id)))
        for directory in sorted(await self._scan(DIRECTORY_PREFIX + "*")):
            await self.client.zrem(directory, participant_id)
        return deleted

    async def _scan(self, pattern: str) -> set[str]:
        keys: set[str] = set()  # SCAN may return a key more than once
        if not self.is_cluster:
            async for key in self.client.scan_iter(match=pattern, count=1000):
                keys.add(_text(key))
            return keys
        for node in self.client.get_primaries():
            cursor = 0
            while True:
                cursors, batch = await self.client.scan(cursor, match=pattern, count=1000, target_nodes=node)
                keys.update(_text(key) for key in batch)
                cursor = cursors[node.name]
                if cursor == 0:
                    break
        return keys

    async def _delete_same_slot(self, keys: list[str]) -> int:
        by_slot: dict[int, list[str]] = {}
        for key in keys:
            by_slot.setdefault(key_slot(key.encode()), []).append(key)
        deleted = 0
        for slot_keys in by_slot.values():
            deleted += int(await self.client.delete(*slot_keys))
        return deleted


# -- helpers --------------------------------------------------------------


def parse_offset(offset: str) -> str:
    """Validate a Subscribe offset; returns "$" or a full stream id "ms-seq"."""
    if not isinstance(offset, str):
        raise ValueError(f"offset must be a string, not {type(offset).__name__}")
    if offset == "":
        return "0-0"
    if offset in ("$", "0"):
        return "0-0" if offset == "0" else "$"
    match = OFFSET_PATTERN.fullmatch(offset)
    if not match or any(int(part) > MAX_STREAM_ID_PART for part in match.groups()):
        raise ValueError(f"malformed offset {offset!r}: expected '', '$' or an offset from a score update")
    return offset


def _missed_removed_entries(after: str, info: Mapping[str, Any]) -> bool:
    """Whether entries newer than `after` may have been removed from the stream.

    Trimming (the MAXLEN cap) removes the oldest entries, so a reader is
    behind it when its offset lies before the first entry still there and
    some entries were removed. At the exact boundary (the reader's last seen
    entry was the last one trimmed) this says True though nothing was
    missed: Redis keeps no record of the last trimmed id. XDEL'd entries are
    covered by max-deleted-entry-id.
    """
    if not info:
        return False
    position = _offset_key(after)
    if position < _offset_key(info.get("max-deleted-entry-id", "0-0")):
        return True
    some_removed = int(info.get("entries-added", 0)) > int(info.get("length", 0))
    first_kept = info.get("recorded-first-entry-id", "0-0")
    return some_removed and position < _offset_key(first_kept)


def _offset_key(offset: str) -> tuple[int, int]:
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq or 0)


def _check_pattern(name: str, value: Any, pattern: re.Pattern) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{name} must match {pattern.pattern}, got {value!r}")


def _check_seq(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise ValueError(f"{name} must be an int in 0..{MAX_SEQ}, got {value!r}")


def _bytes(name: str, value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"{name} must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if not value:
        raise ValueError(f"{name} is empty")
    return value


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _optional_int(value: bytes | None) -> int | None:
    return int(value) if value not in (None, False, b"") else None


def _latest(latest: bytes | None, offset: bytes | None) -> dict[str, Any] | None:
    if not latest:
        return None
    return {**json.loads(latest), "offset": _text(offset)}


def _stream_entries(reply: Any) -> Iterable[tuple[Any, Mapping]]:
    """Entries of a one-stream XREAD reply, in RESP2 (list) or RESP3 (dict) shape."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return next(iter(reply.values()))[0] if reply else []
    return reply[0][1]


def _decode_entry(entry_id: bytes | str, fields: Mapping) -> dict[str, Any]:
    payload = fields.get(b"score", fields.get("score"))
    return {**json.loads(payload), "offset": _text(entry_id)}


def _session_id_of(key_rest: str) -> str | None:
    """Session id from a participant key without its prefix ("V:s:S[:suffix]")."""
    parts = key_rest.split(":")
    if len(parts) >= 3 and parts[1] == "s":
        return parts[2]
    return None


def _batches(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
