"""Session state in Redis: segment vectors, scorer state, applied seq, score streams.

Servers hold no session state; everything a replica needs to take over a
session lives here. Every segment's effect is ONE atomic Lua script, so a
session is never seen with a vector but no state, or a state but no score.
The same code runs against a single server and a Redis Cluster.

The key schema is in store_keys.py, the Lua scripts in store_scripts.py.
Every key of a session gets a TTL (default 30 days, refreshed on every
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
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from redis.exceptions import ResponseError

from moodstream.ids import DEVICE_PATTERN, ID_PATTERN
from moodstream.server.redis_connection import AnyRedis
from moodstream.server.session_directory import SessionDirectory
from moodstream.server.session_listing import SessionListing
from moodstream.server.store_keys import (VERSIONS_KEY, SessionKeys, directory_key, participant_updates_key,
                                          session_model_key)
from moodstream.server.store_records import (ApplyResult, ApplyStatus, KnownState, SessionCursor,
                                             SessionNotFoundError, SessionOwnershipError, SessionRecord,
                                             SessionSnapshot, SessionState, SessionSummary, UpdateBatch)
from moodstream.server.store_scripts import (APPLY_SCRIPT, CLAIM_SCRIPT, END_SCRIPT, INTERRUPT_SCRIPT, LOAD_SCRIPT,
                                             REPLACE_STATE_SCRIPT)
from moodstream.server.store_values import (MODEL_VERSION_PATTERN, as_text, check_pattern, check_seq,
                                            checked_score_update, decode_entry, missed_removed_entries,
                                            nonempty_bytes, optional_int, parse_offset, stored_score,
                                            stream_entries)

__all__ = ["CLAIM_TTL_SECONDS", "DEFAULT_STREAM_MAXLEN", "DEFAULT_TTL_SECONDS", "MAX_READ_COUNT", "SessionStore"]

DEFAULT_TTL_SECONDS = 30 * 24 * 3600
CLAIM_TTL_SECONDS = 600
DEFAULT_STREAM_MAXLEN = 10_000
MAX_READ_COUNT = 10_000


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
        check_pattern("model_version", model_version, MODEL_VERSION_PATTERN)
        if not isinstance(ttl_seconds, int) or ttl_seconds < 0:
            raise ValueError(f"ttl_seconds must be an int >= 0 (0 = no expiry), not {ttl_seconds!r}")
        if not isinstance(stream_maxlen, int) or stream_maxlen < 1:
            raise ValueError(f"stream_maxlen must be an int >= 1, not {stream_maxlen!r}")
        self.client = client
        self.directory = SessionDirectory(client)
        self.model_version = model_version
        self.ttl_seconds = ttl_seconds
        self.stream_maxlen = stream_maxlen
        self.store_audio = store_audio
        if not isinstance(claim_ttl_seconds, int) or claim_ttl_seconds < 1:
            raise ValueError(f"claim_ttl_seconds must be an int >= 1, not {claim_ttl_seconds!r}")
        self.claim_ttl_seconds = min(claim_ttl_seconds, ttl_seconds) if ttl_seconds else claim_ttl_seconds
        self.clock = clock
        # register_script: EVALSHA, and on NOSCRIPT (a restarted Redis, a cluster node that has not seen the
        # script yet) SCRIPT LOAD and EVALSHA again.
        self._apply = client.register_script(APPLY_SCRIPT)
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._end = client.register_script(END_SCRIPT)
        self._interrupt = client.register_script(INTERRUPT_SCRIPT)
        self._load = client.register_script(LOAD_SCRIPT)
        self._replace_state = client.register_script(REPLACE_STATE_SCRIPT)
        self._listing = SessionListing(client, model_version, self.keys)

    @property
    def is_cluster(self) -> bool:
        return self.directory.is_cluster

    def keys(self, participant_id: str, session_id: str) -> SessionKeys:
        check_pattern("participant_id", participant_id, ID_PATTERN)
        check_pattern("session_id", session_id, ID_PATTERN)
        return SessionKeys.build(participant_id, session_id, self.model_version)

    # -- sessions -------------------------------------------------------

    async def pin_model_version(self, session_id: str) -> str:
        """Record this store's model version as the session's, unless one is recorded; returns the session's.

        Until the session's first segment the record lives CLAIM_TTL_SECONDS, then as long as its data.
        """
        check_pattern("session_id", session_id, ID_PATTERN)
        previous = await self.client.set(session_model_key(session_id), self.model_version, nx=True, get=True,
                                         ex=self.claim_ttl_seconds)
        return self.model_version if previous is None else as_text(previous)

    async def session_model_version(self, session_id: str) -> str | None:
        """The model version a session started under (None: unknown, or started before versions were recorded)."""
        return await self.directory.session_model_version(session_id)

    async def stored_model_versions(self, scan: bool = False) -> set[str]:
        """Every model version that has stored a session in this Redis (see SessionDirectory)."""
        return await self.directory.stored_model_versions(scan)

    async def session_owner(self, session_id: str) -> str | None:
        return await self.directory.session_owner(session_id)

    async def claim_session(self, session_id: str, participant_id: str, device_id: str = "") -> SessionRecord:
        """Start or resume a session; raises SessionOwnershipError if another participant owns it."""
        keys = self.keys(participant_id, session_id)
        check_pattern("device_id", device_id, DEVICE_PATTERN)
        previous = await self.client.set(keys.owner, participant_id, nx=True, get=True, ex=self.claim_ttl_seconds)
        if previous is not None and previous.decode() != participant_id:
            raise SessionOwnershipError(f"session {session_id!r} belongs to another participant")
        now = self.clock()
        reply = await self._claim(
            keys.script_keys(),
            [participant_id, session_id, self.model_version, device_id, repr(now), self.ttl_seconds,
             self.claim_ttl_seconds],
        )
        created, applied, segments, speech, started_at, ended_at, latest, latest_offset = reply
        if optional_int(applied) is not None:
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
            applied_seq=optional_int(applied),
            segments=int(segments or 0),
            speech_seconds=float(speech or 0.0),
            ended_at=float(ended_at) if ended_at else None,
            latest=stored_score(latest, latest_offset),
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
        check_pattern("session_id", session_id, ID_PATTERN)
        participant = await self._participant_of(session_id, participant_id)
        if participant is None:
            return SessionState(None, None)
        ended, interrupted = await self.client.hmget(self.keys(participant, session_id).session,
                                                     ["ended_at", "interrupted_at"])
        return SessionState(float(ended) if ended else None, float(interrupted) if interrupted else None)

    async def mark_interrupted(self, session_id: str, participant_id: str) -> bool:
        """Record that the session's stream closed without End; a later stream clears it."""
        keys = self.keys(participant_id, session_id)
        return bool(await self._interrupt([keys.session], [repr(self.clock())]))

    async def clear_interrupted(self, session_id: str, participant_id: str) -> None:
        await self.client.hdel(self.keys(participant_id, session_id).session, "interrupted_at")

    async def _refresh_owner_ttl(self, owner: str) -> None:
        if self.ttl_seconds:
            await self.client.expire(owner, self.ttl_seconds)
        else:
            await self.client.persist(owner)

    async def _participant_of(self, session_id: str, participant_id: str | None) -> str | None:
        if participant_id is not None:
            check_pattern("participant_id", participant_id, ID_PATTERN)
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
        check_pattern("session_id", session_id, ID_PATTERN)
        participant = await self._participant_of(session_id, participant_id)
        if participant is None:
            return SessionSnapshot(None, None, None)
        keys = self.keys(participant, session_id)
        (applied, state, latest, latest_offset), rows, head_known = await self._load(
            keys.script_keys(), [b"", 0, b""] if known is None else [bytes(known.head), known.rows_length,
                                                                    bytes(known.last_row)])
        return SessionSnapshot(optional_int(applied), state or None, stored_score(latest, latest_offset),
                               None if int(head_known) else rows or b"")

    async def replace_state(self, session_id: str, participant_id: str, applied_seq: int, old_state: bytes,
                            head: bytes, rows: bytes) -> bool:
        """Swap a state read by load() for its head and rows; False if a segment was applied meanwhile."""
        keys = self.keys(participant_id, session_id)
        check_seq("applied_seq", applied_seq)
        replaced = await self._replace_state(
            keys.script_keys(),
            [applied_seq, nonempty_bytes("old_state", old_state), nonempty_bytes("head", head), bytes(rows),
             self.ttl_seconds])
        return bool(replaced)

    async def latest_score(self, session_id: str, participant_id: str | None = None) -> dict[str, Any] | None:
        check_pattern("session_id", session_id, ID_PATTERN)
        participant = await self._participant_of(session_id, participant_id)
        if participant is None:
            return None
        # Two fields, not load(): a reader never needs the scorer's rows.
        latest, offset = await self.client.hmget(self.keys(participant, session_id).session, "latest", "latest_offset")
        return stored_score(latest, offset)

    async def end_session(self, session_id: str, participant_id: str | None = None) -> bool:
        """Mark a session ended (no more segments accepted); data stays until its TTL.

        Returns False if there is no such session.
        """
        check_pattern("session_id", session_id, ID_PATTERN)
        participant = await self._participant_of(session_id, participant_id)
        if participant is None:
            return False
        keys = self.keys(participant, session_id)
        found = await self._end(keys.script_keys(), [repr(self.clock()), self.ttl_seconds])
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
        check_seq("seq", seq)
        previous = -1 if expected_prev_seq is None else expected_prev_seq
        if expected_prev_seq is not None:
            check_seq("expected_prev_seq", expected_prev_seq)
        vector = nonempty_bytes("vector", vector)
        if len(vector) % 4:
            raise ValueError(f"vector must be float32 bytes (a multiple of 4), got {len(vector)} bytes")
        state = nonempty_bytes("state", state)
        keep_audio = self.store_audio and audio is not None
        audio_bytes = nonempty_bytes("audio", audio) if keep_audio else b""
        update = checked_score_update(score, session_id=session_id, participant_id=participant_id, seq=seq,
                                      model_version=self.model_version, clock=self.clock)
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
        status = ApplyStatus(as_text(status))
        applied_seq = None if int(applied_seq) < 0 else int(applied_seq)
        if status is not ApplyStatus.APPLIED:
            return ApplyResult(status, applied_seq)
        offset, participant_offset = as_text(offset), as_text(participant_offset)
        if seq == 0:
            await self._settle_claim(keys, participant_id)
        return ApplyResult(status, applied_seq, offset, participant_offset, {**update, "offset": offset})

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
        check_pattern("session_id", session_id, ID_PATTERN)
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
        trimmed = missed_removed_entries(after, info)

        reply = await self.client.xread({stream: after}, count=count, block=block_ms or None)
        task = asyncio.current_task()
        if block_ms and task is not None and task.cancelling():
            # A task cancelled during a blocking XREAD can get an empty reply instead of its
            # CancelledError (redis-py drops it); re-raise it, or a Subscribe loop never ends.
            raise asyncio.CancelledError()
        updates = [decode_entry(entry_id, fields) for entry_id, fields in stream_entries(reply)]
        next_offset = updates[-1]["offset"] if updates else after
        return UpdateBatch(updates, next_offset, trimmed)

    async def _stream_key(self, session_id: str | None, participant_id: str | None) -> str:
        if session_id is None:
            if participant_id is None:
                raise ValueError("read_updates needs a session_id or a participant_id")
            check_pattern("participant_id", participant_id, ID_PATTERN)
            return participant_updates_key(participant_id)
        check_pattern("session_id", session_id, ID_PATTERN)
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
            name: as_text(value) if isinstance(value, (bytes, str)) else value
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
        """One page of this version's sessions and the cursor of the next page (see SessionListing.page)."""
        return await self._listing.page(participants, states=states, active_after=active_after,
                                        active_before=active_before, page_size=page_size, cursor=cursor)

    # -- privacy ----------------------------------------------------------

    async def forget_participant(self, participant_id: str) -> int:
        """Delete every key of a participant, all model versions (not only this store's); returns how many."""
        return await self.directory.forget_participant(participant_id)
