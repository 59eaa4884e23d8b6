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
import logging
import math
import re
import time
from dataclasses import dataclass

import grpc
import numpy as np
import redis.exceptions

from moodstream import SCREENING_NOTICE
from moodstream.model import ScorerState, StateError
from moodstream.server import metrics
from moodstream.server.auth import AuthError, Principal, TokenAuthenticator
from moodstream.server.store import (MAX_SEQ, ApplyStatus, SessionNotFoundError, SessionOwnershipError,
                                     SessionStore, parse_offset)
from moodstream.v1 import moodstream_pb2 as pb
from moodstream.v1 import moodstream_pb2_grpc as pb_grpc

log = logging.getLogger("moodstream.server")

ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEVICE_PATTERN = re.compile(r"[A-Za-z0-9_.-]{0,64}")
SAMPLE_RATE = 16000
BYTES_PER_SAMPLE = 2


class StreamAbort(Exception):
    """Ends a call with a gRPC status; raised anywhere in a handler's tasks."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class ServiceSettings:
    max_seq_ahead: int = 64          # a chunk further ahead of the applied seq is refused
    max_pending_chunks: int = 32     # chunks buffered per stream waiting for a gap or the encoder
    redis_retry_seconds: float = 30.0  # ride out a Redis restart this long before UNAVAILABLE
    subscribe_block_ms: int = 1000


def _check_id(name: str, value: str, pattern: re.Pattern = ID_PATTERN) -> None:
    if not pattern.fullmatch(value):
        raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{name} {value[:80]!r} is invalid: use 1-64 characters from A-Z a-z 0-9 _ . -")


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


def score_message(update: dict) -> pb.ScoreUpdate:
    return pb.ScoreUpdate(
        session_id=update["session_id"], participant_id=update["participant_id"],
        segments=int(update["segments"]), probability=float(update["probability"]),
        above_threshold=bool(update["above_threshold"]), threshold=float(update["threshold"]),
        model_version=update["model_version"], time_unix=float(update["time_unix"]), seq=int(update["seq"]),
        offset=update.get("offset") or "", device_id=update.get("device_id", ""),
        speech_seconds=float(update.get("speech_seconds", 0.0)), notice=SCREENING_NOTICE,
        start_seconds=float(update.get("start_seconds", 0.0)),
        evidence_sufficient=bool(update.get("evidence_sufficient", True)))


async def with_redis_retry(operation, settings: ServiceSettings):
    """Retry an idempotent Redis call across a restart; UNAVAILABLE when it stays down."""
    deadline = time.monotonic() + settings.redis_retry_seconds
    delay = 0.05
    while True:
        try:
            return await operation()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.BusyLoadingError) as error:
            metrics.REDIS_ERRORS.inc()
            if time.monotonic() + delay > deadline:
                raise StreamAbort(grpc.StatusCode.UNAVAILABLE,
                                  f"session store unavailable ({error}); retry later") from error
            log.warning("redis unavailable (%s); retrying in %.2f s", error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


class SessionStream:
    """One open agent stream: ordering, batching hand-off, atomic apply, acks."""

    def __init__(self, service: "ScreeningService", header: pb.SessionHeader, principal: Principal) -> None:
        self.service = service
        self.header = header
        self.principal = principal
        self.session_id = header.session_id
        self.participant_id = header.participant_id
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.pending: dict[int, tuple[pb.Chunk, asyncio.Future, float]] = {}
        self.wake = asyncio.Event()
        self.applied = -1
        self.state: ScorerState | None = None
        self.speech_seconds = 0.0
        self.ended = False
        self.last_seq: int | None = None
        self.input_closed = False

    # ------------------------------------------------------------ start
    async def open(self) -> None:
        service, store = self.service, self.service.store
        try:
            record = await with_redis_retry(lambda: store.claim_session(
                self.session_id, self.participant_id, self.header.device_id), service.settings)
        except SessionOwnershipError as error:
            raise StreamAbort(grpc.StatusCode.PERMISSION_DENIED, str(error)) from error
        self.ended = record.ended
        if not self.ended:
            await with_redis_retry(lambda: store.clear_interrupted(self.session_id, self.participant_id),
                                   service.settings)
        await self.reload()

    async def reload(self) -> None:
        """Take the session's applied seq and scorer state from Redis (the only source of truth)."""
        store, scorer = self.service.store, self.service.scorer
        snapshot = await with_redis_retry(lambda: store.load(self.session_id, self.participant_id),
                                          self.service.settings)
        self.applied = -1 if snapshot.applied_seq is None else snapshot.applied_seq
        if snapshot.state is None:
            self.state = scorer.init_state()
        else:
            try:
                self.state = ScorerState.from_bytes(snapshot.state, expected_model_version=scorer.model_version)
                scorer.check_state(self.state)
            except StateError as error:
                raise StreamAbort(grpc.StatusCode.DATA_LOSS,
                                  f"stored scorer state of session {self.session_id} is unusable: {error}") from error
        latest = snapshot.latest or {}
        self.speech_seconds = float(latest.get("speech_seconds", 0.0))

    # ------------------------------------------------------------ input side
    def ack(self, seq: int, duplicate: bool) -> None:
        self.outbox.put_nowait(pb.StreamResponse(ack=pb.Ack(seq=seq, duplicate=duplicate)))

    def receive_chunk(self, chunk: pb.Chunk) -> None:
        config = self.service.model_config
        seq = chunk.seq
        if seq <= self.applied:
            metrics.CHUNKS.labels("duplicate").inc()
            self.ack(seq, duplicate=True)
            return
        if seq in self.pending:
            metrics.CHUNKS.labels("duplicate").inc()
            return  # already queued: its ack follows when it is applied
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
            if self.applied + 1 in self.pending:  # nothing is missing: the client outran the encoder
                raise StreamAbort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"{len(self.pending)} chunks are unacknowledged; wait for acks before sending "
                                  f"more (at most {settings.max_pending_chunks} in flight)")
            raise StreamAbort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{len(self.pending)} chunks are already waiting for seq {self.applied + 1}; "
                              "send the missing chunk first")
        samples = decode_pcm(seq, chunk.pcm, config.min_segment_seconds, config.max_segment_seconds)
        if not math.isfinite(chunk.start_seconds) or chunk.start_seconds < 0:
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, f"chunk {seq} has an invalid start time")
        future = self.service.encoder.submit(samples)
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

    async def read_requests(self, requests) -> None:
        async for request in requests:
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
        if self.last_seq is not None and not self.ended:
            await with_redis_retry(lambda: self.service.store.end_session(self.session_id, self.participant_id),
                                   self.service.settings)
            self.ended = True

    async def apply(self, seq: int, chunk: pb.Chunk, vector: np.ndarray, arrived: float) -> None:
        service = self.service
        config = service.model_config
        new_state, probability = service.scorer.step(self.state, vector)
        speech_seconds = self.speech_seconds + len(chunk.pcm) / BYTES_PER_SAMPLE / SAMPLE_RATE
        evidence = config.evidence_sufficient(new_state.segments)
        score = {
            "segments": new_state.segments, "probability": probability, "evidence_sufficient": evidence,
            "above_threshold": evidence and probability >= config.decision_threshold,
            "threshold": config.decision_threshold, "model_version": service.model_version,
            "time_unix": time.time(), "seq": seq, "device_id": self.header.device_id,
            "speech_seconds": speech_seconds, "start_seconds": chunk.start_seconds,
        }
        result = await with_redis_retry(lambda: service.store.apply_segment(
            self.session_id, self.participant_id, seq, vector.astype("<f4").tobytes(), new_state.to_bytes(),
            score, expected_prev_seq=None if self.applied < 0 else self.applied,
            audio=chunk.pcm if service.store.store_audio else None), service.settings)
        status = result.status
        if status is ApplyStatus.APPLIED:
            del self.pending[seq]
            self.applied, self.state, self.speech_seconds = seq, new_state, speech_seconds
            metrics.CHUNKS.labels("applied").inc()
            metrics.CHUNK_TO_SCORE_SECONDS.observe(time.perf_counter() - arrived)
            self.ack(seq, duplicate=False)
            self.outbox.put_nowait(pb.StreamResponse(score=score_message(result.score)))
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
            del self.pending[done]
            metrics.CHUNKS.labels("duplicate").inc()
            self.ack(done, duplicate=True)


class ScreeningService(pb_grpc.ScreeningServicer):
    def __init__(self, *, store: SessionStore, encoder, scorer, model_config, model_version: str,
                 authenticator: TokenAuthenticator, settings: ServiceSettings | None = None) -> None:
        self.store = store
        self.encoder = encoder
        self.scorer = scorer
        self.model_config = model_config
        self.model_version = model_version
        self.authenticator = authenticator
        self.settings = settings or ServiceSettings()

    async def _principal(self, context) -> Principal:
        try:
            return self.authenticator.authenticate(context.invocation_metadata())
        except AuthError as error:
            await context.abort(error.code, str(error))

    async def _readable_participant(self, principal: Principal, session_id: str, context) -> str:
        owner = await with_redis_retry(lambda: self.store.session_owner(session_id), self.settings)
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
            while True:
                getter = asyncio.create_task(session.outbox.get())
                done, _ = await asyncio.wait({getter, applier, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                for task in (reader, applier):
                    if task in done and task.exception() is not None:
                        raise task.exception()
                if applier in done:
                    while not session.outbox.empty():
                        yield session.outbox.get_nowait()
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
            if session is not None and not session.ended:
                await self._mark_interrupted(session)

    async def _mark_interrupted(self, session: SessionStream) -> None:
        """Best effort (the stream is gone either way): readers then see the session as interrupted."""
        try:
            await self.store.mark_interrupted(session.session_id, session.participant_id)
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
        if header.model_version and header.model_version != self.model_version:
            raise StreamAbort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"this server runs model {self.model_version}, not {header.model_version}")
        if not principal.may_stream(header.participant_id):
            raise StreamAbort(grpc.StatusCode.PERMISSION_DENIED,
                              f"this token may not stream for participant {header.participant_id!r}")
        session = SessionStream(self, header, principal)
        await session.open()
        return session

    # ------------------------------------------------------------ reads
    async def GetScore(self, request, context):
        principal = await self._principal(context)
        try:
            _check_id("session_id", request.session_id)
            participant = await self._readable_participant(principal, request.session_id, context)
            latest = await with_redis_retry(lambda: self.store.latest_score(request.session_id, participant),
                                            self.settings)
            if latest is None:
                raise StreamAbort(grpc.StatusCode.NOT_FOUND, f"session {request.session_id!r} has no score yet")
            state = await with_redis_retry(lambda: self.store.session_state(request.session_id, participant),
                                           self.settings)
            reply = score_message(latest)
            if state.ended_at is not None:
                reply.session_state, reply.session_state_since_unix = pb.SESSION_STATE_ENDED, state.ended_at
            elif state.interrupted_at is not None:
                reply.session_state = pb.SESSION_STATE_INTERRUPTED
                reply.session_state_since_unix = state.interrupted_at
            else:
                reply.session_state = pb.SESSION_STATE_OPEN
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
            else:
                _check_id("participant_id", request.participant_id)
                if not principal.may_read(request.participant_id):
                    raise StreamAbort(grpc.StatusCode.PERMISSION_DENIED,
                                      f"this token may not read participant {request.participant_id!r}")
                source = {"participant_id": request.participant_id}
            if offset == "$":
                # Pin "now" once, so a reconnect after this point misses nothing.
                batch = await with_redis_retry(lambda: self.store.read_updates(after_offset="$", **source),
                                               self.settings)
                offset = batch.next_offset
            while True:
                current = offset
                batch = await with_redis_retry(lambda: self.store.read_updates(
                    after_offset=current, block_ms=self.settings.subscribe_block_ms, **source), self.settings)
                if batch.trimmed:
                    log.warning("subscriber of %s resumed after trimmed updates", source)
                for update in batch.updates:
                    yield score_message(update)
                offset = batch.next_offset
        except SessionNotFoundError as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        except StreamAbort as error:
            await context.abort(error.code, str(error))
        finally:
            metrics.SUBSCRIBERS_ACTIVE.dec()
