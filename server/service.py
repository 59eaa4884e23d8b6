"""The moodstream.v1.Screening gRPC service.

Stream: authenticate, validate the header, claim the session in Redis, then
for every chunk: validate, encode (batched across streams), step the
incremental scorer, write vector + state + applied seq + score in ONE atomic
Redis script, and only then ack. Chunks are applied strictly in seq order;
an early chunk waits for the gap before it; a resent chunk is acked as a
duplicate and changes nothing. The server keeps no session state beyond one
open stream, so any replica can take a session over after a reconnect.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass

import grpc
import numpy as np
import redis.exceptions

from moodstream import SCREENING_NOTICE
from moodstream.ids import DEVICE_PATTERN, ID_PATTERN, ID_RULE
from moodstream.model import ScorerState, StateError
from moodstream.server import metrics
from moodstream.server.auth import AuthError, Principal, TokenAuthenticator
from moodstream.server.model_repository import ModelRepository, ServedVersion
from moodstream.server.state_cache import DEFAULT_STATE_CACHE_MB, ScorerStateCache
from moodstream.server.store import (DEFAULT_RETRY_SECONDS, ENDED, INTERRUPTED, MAX_PAGE_SIZE, MAX_SEQ, OPEN,
                                     ApplyStatus, KnownState, SessionCursor, SessionNotFoundError,
                                     SessionOwnershipError, SessionStore, SessionSummary, parse_offset)
from moodstream.v1 import moodstream_pb2 as pb
from moodstream.v1 import moodstream_pb2_grpc as pb_grpc
from moodstream.wire import BYTES_PER_SAMPLE, SAMPLE_RATE, score_from_dict

log = logging.getLogger("moodstream.server")



class StreamAbort(Exception):
    """Ends a call with a gRPC status; raised anywhere in a handler's tasks."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class ServiceSettings:
    max_seq_ahead: int = 64          # a chunk further ahead of the applied seq is refused
    max_pending_chunks: int = 32     # chunks buffered per stream waiting for a gap or the encoder
    redis_retry_seconds: float = DEFAULT_RETRY_SECONDS  # the store's client rides out a Redis outage this long
    subscribe_block_ms: int = 1000
    token_check_seconds: float = 1.0   # an open call notices a revoked token within this long
    state_cache_mb: float = DEFAULT_STATE_CACHE_MB  # restored scorer states kept in memory (0 = off)


def _check_id(name: str, value: str, pattern: re.Pattern = ID_PATTERN) -> None:
    if not pattern.fullmatch(value):
        raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{name} {value[:80]!r} is invalid: use {ID_RULE}")


def decode_pcm(seq: int, pcm: bytes, min_seconds: float, max_seconds: float) -> np.ndarray:
    """A chunk's PCM s16le bytes as float32 samples in [-1, 1); INVALID_ARGUMENT if unusable."""
    if not pcm:
        raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, f"chunk {seq} has no audio")
    if len(pcm) % BYTES_PER_SAMPLE:
        raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"chunk {seq} has {len(pcm)} bytes: PCM s16le needs an even byte count")
    seconds = len(pcm) / BYTES_PER_SAMPLE / SAMPLE_RATE
    if seconds < min_seconds:
        raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"chunk {seq} holds {seconds:.2f} s of audio; the minimum is {min_seconds} s")
    if seconds > max_seconds:
        raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"chunk {seq} holds {seconds:.2f} s of audio; the maximum is {max_seconds} s")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def stream_refused(header: pb.SessionHeader) -> StreamAbort:
    # One answer for a participant outside the token's scope and for a session id that another
    # participant holds, so the refusal never says whose session an id is.
    return StreamAbort(grpc.StatusCode.PERMISSION_DENIED,
                       f"this token may not stream session {header.session_id!r} "
                       f"for participant {header.participant_id!r}")


DEFAULT_PAGE_SIZE = 100
SESSION_STATE_MESSAGES = {OPEN: pb.SESSION_STATE_OPEN, ENDED: pb.SESSION_STATE_ENDED,
                          INTERRUPTED: pb.SESSION_STATE_INTERRUPTED}
SESSION_STATE_NAMES = {number: name for name, number in SESSION_STATE_MESSAGES.items()}


def summary_message(summary: SessionSummary) -> pb.SessionSummary:
    message = pb.SessionSummary(
        session_id=summary.session_id, participant_id=summary.participant_id, device_id=summary.device_id,
        model_version=summary.model_version,
        state=SESSION_STATE_MESSAGES[summary.state.name], state_since_unix=summary.state.since or 0.0,
        started_unix=summary.started_unix, last_update_unix=summary.last_update_unix, segments=summary.segments,
        speech_seconds=summary.speech_seconds)
    if summary.latest is not None:
        message.latest.CopyFrom(score_from_dict(summary.latest))
    return message


def _query_fingerprint(request: pb.ListSessionsRequest) -> str:
    query = [request.participant_id, sorted(set(request.states)), request.active_after_unix,
             request.active_before_unix]
    return hashlib.sha256(json.dumps(query).encode()).hexdigest()[:16]


def encode_page_token(cursor: SessionCursor | None, request: pb.ListSessionsRequest) -> str:
    if cursor is None:
        return ""
    payload = json.dumps([_query_fingerprint(request), *cursor], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(token: str, request: pb.ListSessionsRequest) -> SessionCursor | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        fingerprint, participant, started, session = json.loads(raw)
        cursor = SessionCursor(participant, float(started), session)
        valid = ID_PATTERN.fullmatch(participant) and ID_PATTERN.fullmatch(session) and math.isfinite(started)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                          "page_token is malformed: pass the next_page_token of the previous page as it was")
    if fingerprint != _query_fingerprint(request):
        raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                          "page_token belongs to a query with other filters: keep the filters while paging")
    return cursor


def _time_bound(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, f"{name} must be a Unix time >= 0 (0 = unbounded)")
    return value


async def redis_call(operation):
    """Await a store call; UNAVAILABLE once Redis stayed down past the client's own retries (store.connect)."""
    try:
        return await operation()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        metrics.REDIS_ERRORS.inc()
        raise StreamAbort(grpc.StatusCode.UNAVAILABLE, f"session store unavailable ({error}); retry later") from error


async def _messages(*requests: pb.StreamRequest):
    for request in requests:
        yield request


class SessionStream:
    """One open agent stream: ordering, batching hand-off, atomic apply, acks."""

    def __init__(self, service: "ScreeningService", header: pb.SessionHeader, principal: Principal,
                 served: ServedVersion) -> None:
        self.service = service
        self.served = served  # the model version this session started under, for its whole life
        self.header = header
        self.principal = principal
        self.session_id = header.session_id
        self.participant_id = header.participant_id
        self.responses: asyncio.Queue = asyncio.Queue()
        self.pending: dict[int, tuple[pb.Chunk, asyncio.Future, float]] = {}
        # Copies of a seq received while its first copy was still pending: each gets its own
        # duplicate ack once the first is applied, so every chunk received gets exactly one ack.
        self.queued_copies: dict[int, int] = {}
        self.wake = asyncio.Event()
        self.drained = asyncio.Event()  # set by the applier whenever pending shrinks
        self.applied = -1
        self.state: ScorerState | None = None
        self.speech_seconds = 0.0
        self.ended = False
        self.last_seq: int | None = None
        self.input_closed = False

    # ------------------------------------------------------------ start
    async def open(self) -> None:
        store = self.served.store
        try:
            record = await redis_call(lambda: store.claim_session(
                self.session_id, self.participant_id, self.header.device_id))
        except SessionOwnershipError as error:
            raise stream_refused(self.header) from error
        self.ended = record.ended
        if not self.ended:
            await redis_call(lambda: store.clear_interrupted(self.session_id, self.participant_id))
        await self.reload()

    @property
    def cache_key(self) -> str:
        """The session's key in the server's state cache: its Redis hash key (participant, version, session)."""
        return self.served.store.keys(self.participant_id, self.session_id).session

    async def reload(self) -> None:
        """Take the session's applied seq and scorer state from Redis (the only source of truth).

        A state this server holds in its cache is used only if Redis's head is still its head; only
        then are the rows not read and not restored (server/state_cache.py).
        """
        store, scorer, cache = self.served.store, self.served.scorer, self.service.state_cache
        key = self.cache_key
        cached = cache.get(key)
        snapshot = await redis_call(lambda: store.load(self.session_id, self.participant_id,
                                                       known=cached.known if cached else None))
        if snapshot.rows is None and cache.get(key) is not cached:
            # The entry changed while Redis answered (another call of this session on this server): read all.
            snapshot = await redis_call(lambda: store.load(self.session_id, self.participant_id))
        self.applied = -1 if snapshot.applied_seq is None else snapshot.applied_seq
        if snapshot.state is None:
            cache.discard(key)
            self.state = scorer.init_state()
        elif snapshot.rows is None:
            cache.hit(key)
            self.state = cached.state
        else:
            cache.discard(key)
            cache.miss()
            try:
                if ScorerState.is_head(snapshot.state):
                    # Rebuilding the softmax sums is O(n^2 d): hundreds of ms for a session of hours.
                    self.state = await asyncio.to_thread(scorer.restore, snapshot.state, snapshot.rows)
                else:
                    self.state = ScorerState.from_bytes(snapshot.state, expected_model_version=scorer.model_version)
                    scorer.check_state(self.state)
            except StateError as error:
                raise StreamAbort(grpc.StatusCode.DATA_LOSS,
                                  f"stored scorer state of session {self.session_id} is unusable: {error}") from error
            if ScorerState.is_head(snapshot.state):
                cache.put(key, KnownState.of(snapshot.state, self.state), self.state)
            else:
                await self.migrate_state(snapshot)
        latest = snapshot.latest or {}
        self.speech_seconds = float(latest.get("speech_seconds", 0.0))

    async def migrate_state(self, snapshot) -> None:
        """Store a whole state of the older format as head + rows, so each next segment writes O(d)."""
        store = self.served.store
        replaced = await redis_call(lambda: store.replace_state(
            self.session_id, self.participant_id, snapshot.applied_seq, snapshot.state,
            self.state.head_bytes(), self.state.row_bytes()))
        if replaced:
            log.info("session %s: scorer state moved to the head + rows format", self.session_id)
            self.service.state_cache.put(self.cache_key, KnownState.of(self.state.head_bytes(), self.state),
                                         self.state)
        else:  # a segment was applied meanwhile, by a writer that migrated it already
            await self.reload()

    # ------------------------------------------------------------ input side
    def ack(self, seq: int, duplicate: bool) -> None:
        self.responses.put_nowait(pb.StreamResponse(ack=pb.Ack(seq=seq, duplicate=duplicate)))

    def receive_chunk(self, chunk: pb.Chunk) -> None:
        config = self.served.config
        seq = chunk.seq
        if seq <= self.applied:
            metrics.CHUNKS.labels("duplicate").inc()
            self.ack(seq, duplicate=True)
            return
        if seq in self.pending:
            self.queued_copies[seq] = self.queued_copies.get(seq, 0) + 1
            return  # acked as a duplicate right after its first copy is applied
        if self.ended:
            raise StreamAbort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"session {self.session_id} has ended; start a new session for new speech")
        if self.last_seq is not None and seq > self.last_seq:
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, f"chunk {seq} comes after End(last_seq={self.last_seq})")
        settings = self.service.settings
        if seq > self.applied + settings.max_seq_ahead:
            raise StreamAbort(grpc.StatusCode.OUT_OF_RANGE,
                              f"chunk seq {seq} is too far ahead of the last applied seq {self.applied} "
                              f"(at most {settings.max_seq_ahead}); send chunks in order")
        if len(self.pending) >= settings.max_pending_chunks:
            # read_requests waits for room while nothing is missing, so a full buffer here means
            # every buffered chunk waits for a seq that has not come: a true abuse bound.
            raise StreamAbort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{len(self.pending)} chunks are already waiting for seq {self.applied + 1}; "
                              "send the missing chunk first")
        samples = decode_pcm(seq, chunk.pcm, config.min_segment_seconds, config.max_segment_seconds)
        if not math.isfinite(chunk.start_seconds) or chunk.start_seconds < 0:
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, f"chunk {seq} has an invalid start time")
        future = self.served.encoder.submit(samples)
        self.pending[seq] = (chunk, future, time.perf_counter())
        self.wake.set()

    def receive_end(self, end: pb.End) -> None:
        max_seq_ahead = self.service.settings.max_seq_ahead
        if end.last_seq > self.applied + max_seq_ahead:
            # Checked first: the gap scan below must stay bounded whatever last_seq says.
            raise StreamAbort(grpc.StatusCode.OUT_OF_RANGE,
                              f"End(last_seq={end.last_seq}) is too far ahead of the last applied seq "
                              f"{self.applied} (at most {max_seq_ahead})")
        if end.last_seq < self.applied:
            # The agent knows of fewer chunks than were applied: it lost its outbox or mixed sessions.
            raise StreamAbort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"End(last_seq={end.last_seq}) but seq {self.applied} was already applied")
        beyond = [seq for seq in self.pending if seq > end.last_seq]
        if beyond:
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, f"chunk {min(beyond)} comes after End")
        missing = [seq for seq in range(self.applied + 1, end.last_seq + 1) if seq not in self.pending]
        if missing:
            raise StreamAbort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"End(last_seq={end.last_seq}) but chunk(s) {missing[:5]} were never sent; "
                              "resend them before ending")
        self.last_seq = end.last_seq
        self.wake.set()

    async def wait_for_room(self) -> None:
        """Backpressure: stop reading while the buffer is full and its chunks can be applied.

        Not reading lets HTTP/2 flow control slow the sender, so a client flushing a backlog is
        paced to the encoder instead of refused.
        """
        limit = self.service.settings.max_pending_chunks
        while len(self.pending) >= limit and self.applied + 1 in self.pending:
            self.drained.clear()
            await self.drained.wait()

    async def read_requests(self, requests) -> None:
        async for request in requests:
            await self.wait_for_room()
            kind = request.WhichOneof("message")
            if kind == "chunk":
                self.receive_chunk(request.chunk)
            elif kind == "end":
                self.receive_end(request.end)
            elif kind == "header":
                raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, "only the first message may be a SessionHeader")
            else:
                raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, "empty StreamRequest")
        self.input_closed = True
        self.wake.set()

    # ------------------------------------------------------------ apply side
    def finished(self) -> bool:
        if self.last_seq is not None:
            return self.applied >= self.last_seq
        return self.input_closed and (self.applied + 1) not in self.pending

    def unapplied_error(self) -> StreamAbort:
        """The input closed while chunks still wait for a seq that never came."""
        waiting = sorted(self.pending)
        missing = [seq for seq in range(self.applied + 1, waiting[-1]) if seq not in self.pending]
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        return StreamAbort(grpc.StatusCode.FAILED_PRECONDITION,
                           f"the stream closed with chunk(s) {waiting[:10]} not applied: seq(s) {shown} never "
                           f"arrived; resend from seq {self.applied + 1}")

    async def apply_in_order(self) -> None:
        while not self.finished():
            next_seq = self.applied + 1
            if next_seq not in self.pending:
                self.wake.clear()
                if next_seq in self.pending or self.finished():
                    continue
                await self.wake.wait()
                continue
            chunk, future, arrived = self.pending[next_seq]
            vector = await future
            await self.apply(next_seq, chunk, vector, arrived)
        if self.pending:
            raise self.unapplied_error()
        if self.last_seq is not None and not self.ended:
            written = await redis_call(lambda: self.served.store.end_session(self.session_id, self.participant_id))
            if not written:  # an End is acknowledged only once it is stored
                raise StreamAbort(grpc.StatusCode.ABORTED,
                                  f"session {self.session_id} expired or was deleted before its End; reconnect")
            self.ended = True

    async def apply(self, seq: int, chunk: pb.Chunk, vector: np.ndarray, arrived: float) -> None:
        served = self.served
        config = served.config
        new_state, probability = served.scorer.step(self.state, vector)
        speech_seconds = self.speech_seconds + len(chunk.pcm) / BYTES_PER_SAMPLE / SAMPLE_RATE
        evidence = config.evidence_sufficient(new_state.segments)
        score = {
            "segments": new_state.segments, "probability": probability, "evidence_sufficient": evidence,
            "above_threshold": evidence and probability >= config.decision_threshold,
            "threshold": config.decision_threshold, "model_version": served.model_version,
            "time_unix": time.time(), "seq": seq, "device_id": self.header.device_id,
            "speech_seconds": speech_seconds, "start_seconds": chunk.start_seconds,
        }
        head = new_state.head_bytes()
        result = await redis_call(lambda: served.store.apply_segment(
            self.session_id, self.participant_id, seq, vector.astype("<f4").tobytes(), head,
            score, expected_prev_seq=None if self.applied < 0 else self.applied,
            audio=chunk.pcm if served.store.store_audio else None,
            state_rows=new_state.row_bytes(self.state.rows)))
        status = result.status
        if status is ApplyStatus.APPLIED:
            self.service.state_cache.put(self.cache_key, KnownState.of(head, new_state), new_state)
            self.settle(seq)
            self.applied, self.state, self.speech_seconds = seq, new_state, speech_seconds
            metrics.CHUNKS.labels("applied").inc()
            metrics.CHUNK_TO_SCORE_SECONDS.observe(time.perf_counter() - arrived)
            self.ack(seq, duplicate=False)
            self.ack_queued_copies(seq)
            self.responses.put_nowait(pb.StreamResponse(score=score_from_dict(result.score)))
            return
        if status is ApplyStatus.ENDED:
            raise StreamAbort(grpc.StatusCode.FAILED_PRECONDITION, f"session {self.session_id} has ended")
        if status is ApplyStatus.UNCLAIMED:
            raise StreamAbort(grpc.StatusCode.ABORTED,
                              f"session {self.session_id} expired or was deleted while streaming; reconnect")
        # DUPLICATE / CONFLICT / GAP: another writer (a stale or parallel connection) moved the
        # session; Redis is the truth, so take its state and carry on from there.
        before = self.applied
        await self.reload()
        log.info("session %s: %s at seq %d, took over applied seq %d from the store",
                 self.session_id, status, seq, self.applied)
        if self.applied < before:
            raise StreamAbort(grpc.StatusCode.ABORTED, f"session {self.session_id} went back in the store; reconnect")
        for done in sorted(s for s in self.pending if s <= self.applied):
            self.settle(done)
            metrics.CHUNKS.labels("duplicate").inc()
            self.ack(done, duplicate=True)
            self.ack_queued_copies(done)

    def settle(self, seq: int) -> None:
        del self.pending[seq]
        self.drained.set()

    def ack_queued_copies(self, seq: int) -> None:
        for _ in range(self.queued_copies.pop(seq, 0)):
            metrics.CHUNKS.labels("duplicate").inc()
            self.ack(seq, duplicate=True)


class ScreeningService(pb_grpc.ScreeningServicer):
    """Args:
        repository: the model versions held (streams); make_store: model version -> SessionStore, for
            reading sessions of any version, held or not.
    """

    def __init__(self, *, repository: ModelRepository, make_store, authenticator: TokenAuthenticator,
                 settings: ServiceSettings | None = None) -> None:
        self.repository = repository
        self._make_store = make_store
        self._stores: dict[str, SessionStore] = {}
        self.authenticator = authenticator
        self.settings = settings or ServiceSettings()
        if not (math.isfinite(self.settings.state_cache_mb) and self.settings.state_cache_mb >= 0):
            raise ValueError(f"the state cache size must be >= 0 MB (0 = off), not {self.settings.state_cache_mb}")
        self.state_cache = ScorerStateCache(int(self.settings.state_cache_mb * 2**20))

    @property
    def store(self) -> SessionStore:
        """The current version's store; for what does not depend on the version (owners, participant streams)."""
        return self.repository.served_current().store

    def store_for(self, version: str) -> SessionStore:
        served = self.repository.get(version)
        if served is not None:
            return served.store
        if version not in self._stores:
            self._stores[version] = self._make_store(version)
        return self._stores[version]

    async def session_store(self, session_id: str) -> SessionStore:
        """The store of the version a session started under (the current one for sessions that predate
        recorded versions)."""
        version = await redis_call(lambda: self.store.session_model_version(session_id))
        return self.store if version is None else self.store_for(version)

    def held_versions(self) -> str:
        return ", ".join(self.repository.held())

    async def _principal(self, context) -> Principal:
        try:
            return self.authenticator.authenticate(context.invocation_metadata())
        except AuthError as error:
            await context.abort(error.code, str(error))

    def _check_still_valid(self, principal: Principal) -> None:
        if not self.authenticator.is_current(principal):
            raise StreamAbort(grpc.StatusCode.UNAUTHENTICATED,
                              f"token {principal.name!r} was revoked or its scope changed; "
                              "reconnect with a valid token")

    async def _readable_participant(self, principal: Principal, session_id: str, context) -> str:
        owner = await redis_call(lambda: self.store.session_owner(session_id))
        if owner is None or not principal.may_read(owner):
            # Without read access to everyone, an unknown session looks like a forbidden one.
            if owner is None and principal.may_read("*"):
                raise StreamAbort(grpc.StatusCode.NOT_FOUND, f"no session {session_id!r}")
            raise StreamAbort(grpc.StatusCode.PERMISSION_DENIED, f"this token may not read session {session_id!r}")
        return owner

    # ------------------------------------------------------------ Stream
    async def Stream(self, request_iterator, context):
        principal = await self._principal(context)
        metrics.STREAMS_ACTIVE.inc()
        tasks: list[asyncio.Task] = []
        session = None
        try:
            session = await self._open_stream(principal, request_iterator)
            tasks = [asyncio.create_task(session.read_requests(request_iterator), name="stream-reader"),
                     asyncio.create_task(session.apply_in_order(), name="stream-applier")]
            reader, applier = tasks
            getter = None
            while True:
                if getter is None:
                    getter = asyncio.create_task(session.responses.get())
                    tasks.append(getter)
                done, _ = await asyncio.wait({getter, applier, reader}, timeout=self.settings.token_check_seconds,
                                             return_when=asyncio.FIRST_COMPLETED)
                self._check_still_valid(principal)
                if getter in done:
                    tasks.remove(getter)
                    yield getter.result()
                    getter = None
                    continue
                if not done:
                    continue
                getter.cancel()  # awaited with the other tasks at the end
                getter = None
                for task in (reader, applier):
                    if task in done and task.exception() is not None:
                        raise task.exception()
                if applier in done:
                    while not session.responses.empty():
                        yield session.responses.get_nowait()
                    return
                if reader in done and session.input_closed:
                    reader = asyncio.get_running_loop().create_future()  # wait on the applier alone
        except StreamAbort as error:
            metrics.CHUNKS.labels("rejected").inc()
            log.info("stream aborted: %s %s", error.code.name, error)
            await context.abort(error.code, str(error))
        finally:
            metrics.STREAMS_ACTIVE.dec()
            for task in tasks:
                task.cancel()
            for task in tasks:
                try:
                    await task
                except BaseException:
                    pass
            if session is not None:
                if not session.ended:
                    await self._mark_interrupted(session)
                await self.repository.release(session.served)

    async def _mark_interrupted(self, session: SessionStream) -> None:
        """Best effort (the stream is gone either way): readers then see the session as interrupted."""
        try:
            await session.served.store.mark_interrupted(session.session_id, session.participant_id)
        except (redis.exceptions.RedisError, asyncio.CancelledError) as error:
            log.info("session %s: could not mark it interrupted (%s)", session.session_id, error)

    async def _open_stream(self, principal: Principal, request_iterator) -> SessionStream:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, "empty stream: send a SessionHeader first") from None
        if first.WhichOneof("message") != "header":
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                              "the first message must be a SessionHeader (wrong message order)")
        header = first.header
        _check_id("session_id", header.session_id)
        _check_id("participant_id", header.participant_id)
        _check_id("device_id", header.device_id, DEVICE_PATTERN)
        if header.sample_rate != SAMPLE_RATE:
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"sample_rate must be {SAMPLE_RATE} Hz, got {header.sample_rate}; resample on the agent")
        if header.encoding != pb.AUDIO_ENCODING_PCM_S16LE:
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, "encoding must be AUDIO_ENCODING_PCM_S16LE")
        if header.resume_from_seq > MAX_SEQ:
            # A uint64 this large is a client bug (often -1 sent as unsigned); no session gets that far.
            raise StreamAbort(grpc.StatusCode.OUT_OF_RANGE,
                              f"resume_from_seq {header.resume_from_seq} is out of range (at most {MAX_SEQ})")
        pinned = header.model_version
        if pinned and self.repository.get(pinned) is None:
            raise StreamAbort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"this server does not hold model {pinned}; it holds {self.held_versions()}")
        if not principal.may_stream(header.participant_id):
            raise stream_refused(header)
        served = await self._session_version(header)
        session = SessionStream(self, header, principal, served)
        try:
            await session.open()
        except BaseException:
            await self.repository.release(served)
            raise
        return session

    async def _session_version(self, header: pb.SessionHeader) -> ServedVersion:
        """The version the session started under (recorded now if it starts), held for the stream."""
        session_id, pinned = header.session_id, header.model_version
        owner = await redis_call(lambda: self.store.session_owner(session_id))
        if owner is not None and owner != header.participant_id:
            raise stream_refused(header)
        starting = self.repository.get(pinned) if pinned else self.repository.served_current()
        version = await redis_call(lambda: starting.store.pin_model_version(session_id))
        if pinned and version != pinned:
            raise StreamAbort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"session {session_id} runs model {version}, not {pinned}")
        served = self.repository.acquire(version)
        if served is None:
            raise StreamAbort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"session {session_id} started under model {version}, which this server no longer "
                              f"holds (it holds {self.held_versions()}); end it and start a new session")
        return served

    # ------------------------------------------------------------ PutChunk
    async def PutChunk(self, request, context):
        """Stream's semantics for one chunk or End per call (clients that cannot stream)."""
        principal = await self._principal(context)
        try:
            kind = request.WhichOneof("message")
            if kind is None:
                raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, "PutChunkRequest holds neither a chunk nor End")
            if not request.HasField("header"):
                raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, "PutChunkRequest needs its session header")
            requests = _messages(pb.StreamRequest(header=request.header),
                                 pb.StreamRequest(**{kind: getattr(request, kind)}))
            session = await self._open_stream(principal, requests)
            try:
                return await self._put(session, requests, kind)
            finally:
                await self.repository.release(session.served)
        except StreamAbort as error:
            metrics.CHUNKS.labels("rejected").inc()
            log.info("PutChunk refused: %s %s", error.code.name, error)
            await context.abort(error.code, str(error))

    async def _put(self, session: SessionStream, requests, kind: str) -> pb.PutChunkResponse:
        await session.read_requests(requests)
        waiting = sorted(seq for seq in session.pending if seq > session.applied + 1)
        if waiting:
            raise StreamAbort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"chunk {waiting[0]} waits for seq {session.applied + 1}, which has not been "
                              f"applied: send seq {session.applied + 1} first, then this chunk again")
        await session.apply_in_order()
        reply = pb.PutChunkResponse(ended=kind == "end" and session.ended)
        while not session.responses.empty():
            response = session.responses.get_nowait()
            if response.WhichOneof("message") == "ack":
                reply.ack.CopyFrom(response.ack)
            elif response.WhichOneof("message") == "score":
                reply.score.CopyFrom(response.score)
        return reply

    # ------------------------------------------------------------ reads
    async def GetScore(self, request, context):
        principal = await self._principal(context)
        try:
            _check_id("session_id", request.session_id)
            participant = await self._readable_participant(principal, request.session_id, context)
            store = await self.session_store(request.session_id)
            latest = await redis_call(lambda: store.latest_score(request.session_id, participant))
            if latest is None:
                raise StreamAbort(grpc.StatusCode.NOT_FOUND, f"session {request.session_id!r} has no score yet")
            state = await redis_call(lambda: store.session_state(request.session_id, participant))
            reply = score_from_dict(latest)
            reply.session_state = SESSION_STATE_MESSAGES[state.name]
            reply.session_state_since_unix = state.since or 0.0
            return reply
        except StreamAbort as error:
            await context.abort(error.code, str(error))

    async def Subscribe(self, request, context):
        principal = await self._principal(context)
        metrics.SUBSCRIBERS_ACTIVE.inc()
        try:
            target = request.WhichOneof("target")
            if target is None:
                raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, "set session_id or participant_id")
            try:
                offset = parse_offset(request.after_offset)
            except ValueError as error:
                raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
            if target == "session_id":
                _check_id("session_id", request.session_id)
                participant = await self._readable_participant(principal, request.session_id, context)
                source = {"session_id": request.session_id, "participant_id": participant}
                store = await self.session_store(request.session_id)
            else:
                _check_id("participant_id", request.participant_id)
                if not principal.may_read(request.participant_id):
                    raise StreamAbort(grpc.StatusCode.PERMISSION_DENIED,
                                      f"this token may not read participant {request.participant_id!r}")
                source = {"participant_id": request.participant_id}
                store = self.store  # a participant's stream is one for every version
            if offset == "$":
                # Pin "now" once, so a reconnect after this point misses nothing.
                batch = await redis_call(lambda: store.read_updates(after_offset="$", **source))
                offset = batch.next_offset
            while True:
                self._check_still_valid(principal)
                current = offset
                batch = await redis_call(lambda: store.read_updates(
                    after_offset=current, block_ms=self.settings.subscribe_block_ms, **source))
                if batch.trimmed:
                    log.warning("subscriber of %s resumed after trimmed updates", source)
                for update in batch.updates:
                    yield score_from_dict(update)
                offset = batch.next_offset
        except SessionNotFoundError as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        except StreamAbort as error:
            await context.abort(error.code, str(error))
        finally:
            metrics.SUBSCRIBERS_ACTIVE.dec()

    # ------------------------------------------------------------ the session directory
    async def ListSessions(self, request, context):
        principal = await self._principal(context)
        try:
            if request.participant_id:
                _check_id("participant_id", request.participant_id)
                if not principal.may_read(request.participant_id):
                    raise StreamAbort(grpc.StatusCode.PERMISSION_DENIED,
                                      f"this token may not read participant {request.participant_id!r}")
                participants = [request.participant_id]
            elif principal.may_read("*"):
                participants = None  # the whole directory
            elif principal.read:
                participants = sorted(principal.read)
            else:
                raise StreamAbort(grpc.StatusCode.PERMISSION_DENIED, "this token may not read any participant")
            unknown = sorted(set(request.states) - set(SESSION_STATE_NAMES))
            if unknown:
                raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"states has unknown or unspecified session state(s) {unknown}: use OPEN, "
                                  "ENDED or INTERRUPTED, or leave states empty for every state")
            after = _time_bound("active_after_unix", request.active_after_unix)
            before = _time_bound("active_before_unix", request.active_before_unix)
            if after and before and before < after:
                raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                                  "active_before_unix is earlier than active_after_unix: the window is empty")
            cursor = decode_page_token(request.page_token, request)
            page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            summaries, next_cursor = await redis_call(lambda: self._list_sessions(
                participants, states={SESSION_STATE_NAMES[number] for number in request.states}, active_after=after, active_before=before,
                page_size=page_size, cursor=cursor))
            return pb.ListSessionsResponse(sessions=[summary_message(summary) for summary in summaries],
                                           next_page_token=encode_page_token(next_cursor, request))
        except StreamAbort as error:
            await context.abort(error.code, str(error))

    async def _list_sessions(self, participants, *, page_size: int, cursor, **filters):
        """One directory page over every model version: each version's page in the directory's order
        (participant, newest start, session id descending), merged; the first page_size are the page."""
        versions = set(self.repository.held()) | await self.store.stored_model_versions()
        found, more = [], False
        for version in sorted(versions):
            page, next_cursor = await self.store_for(version).list_sessions(
                participants, page_size=page_size, cursor=cursor, **filters)
            found += page
            more = more or next_cursor is not None
        found.sort(key=lambda summary: (summary.started_unix, summary.session_id), reverse=True)
        found.sort(key=lambda summary: summary.participant_id)
        more = more or len(found) > page_size
        page = found[:page_size]
        if not more or not page:
            return page, None
        last = page[-1]
        return page, SessionCursor(last.participant_id, last.started_unix, last.session_id)

    # ------------------------------------------------------------ model info
    async def GetModelInfo(self, request, context):
        await self._principal(context)  # any valid token: agents need this before they stream
        wanted = request.model_version
        if wanted and self.repository.get(wanted) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"this server does not hold model {wanted}; it holds {self.held_versions()}")
        served = self.repository.get(wanted) if wanted else self.repository.served_current()
        info = model_info(served)
        info.versions.extend(model_info(self.repository.get(version)) for version in self.repository.held())
        return info


def model_info(served: ServedVersion) -> pb.ModelInfo:
    config = served.config
    info = pb.ModelInfo(model_version=served.model_version, threshold=config.decision_threshold,
                        sample_rate=SAMPLE_RATE, min_chunk_seconds=config.min_segment_seconds,
                        max_chunk_seconds=config.max_segment_seconds, notice=SCREENING_NOTICE,
                        min_evidence_segments=config.min_evidence_segments,
                        training_data=config.training_data, positive_class=config.positive_class,
                        demo_model=config.demo_model)
    if config.speech is not None:
        info.speech.CopyFrom(pb.SpeechSettings(**config.speech))
    return info
