"""The state of one open Stream call: chunk order, acks, duplicates, End, and the atomic apply.

For every chunk: validate, encode (batched across streams), step the incremental scorer, write
vector + state + applied seq + score in ONE atomic Redis script, and only then ack. Chunks are
applied strictly in seq order; an early chunk waits for the gap before it; a resent chunk is acked
as a duplicate and changes nothing. Redis is the only source of truth, so any replica can take a
session over after a reconnect.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

import grpc
import numpy as np

from moodstream.model import ScorerState, StateError
from moodstream.server import metrics
from moodstream.server.auth import Principal
from moodstream.server.model_repository import ServedVersion
from moodstream.server.rpc_errors import StreamAbort, redis_call
from moodstream.server.store_records import ApplyStatus, KnownState, SessionOwnershipError
from moodstream.v1 import moodstream_pb2 as pb
from moodstream.wire import BYTES_PER_SAMPLE, SAMPLE_RATE, score_from_dict

if TYPE_CHECKING:
    from moodstream.server.service import ScreeningService

log = logging.getLogger("moodstream.server")


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


class SessionStream:
    """One open agent stream: ordering, batching hand-off, atomic apply, acks."""

    def __init__(self, service: ScreeningService, header: pb.SessionHeader, principal: Principal,
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
        self.refusal: StreamAbort | None = None  # why the input was refused, raised once what came before is applied

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
            metrics.CHUNKS.labels("duplicate", self.served.model_version).inc()
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
        beyond = sorted(seq for seq in self.pending if seq > end.last_seq)
        if beyond:
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"End(last_seq={end.last_seq}) came after chunk {beyond[-1]} was sent: last_seq must "
                              f"be the highest seq sent, at least {beyond[-1]}")
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

    async def read_until_refused(self, requests) -> None:
        """Stream's reader: a refused message ends the input like a half-close, so the applier still
        applies and acks every chunk received before it, and then ends the call with the refusal."""
        try:
            await self.read_requests(requests)
        except StreamAbort as refusal:
            self.refusal = refusal
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
        if self.refusal is not None:
            raise self.refusal  # and the End of a refused stream is not stored: the client sends it again
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
        new_state, scored = served.scorer.step_scored(self.state, vector)
        probability = scored.probability
        speech_seconds = self.speech_seconds + len(chunk.pcm) / BYTES_PER_SAMPLE / SAMPLE_RATE
        evidence = config.evidence_sufficient(new_state.segments)
        score = {
            "segments": new_state.segments, "probability": probability, "evidence_sufficient": evidence,
            "above_threshold": evidence and probability >= config.decision_threshold,
            "threshold": config.decision_threshold, "model_version": served.model_version,
            "time_unix": served.store.clock(), "seq": seq, "device_id": self.header.device_id,
            "speech_seconds": speech_seconds, "start_seconds": chunk.start_seconds,
        }
        if scored.has_interval:
            score.update(probability_low=scored.low, probability_high=scored.high, interval_level=scored.level)
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
            metrics.CHUNKS.labels("applied", self.served.model_version).inc()
            metrics.CHUNK_TO_SCORE_SECONDS.labels(self.served.model_version).observe(time.perf_counter() - arrived)
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
            metrics.CHUNKS.labels("duplicate", self.served.model_version).inc()
            self.ack(done, duplicate=True)
            self.ack_queued_copies(done)

    def settle(self, seq: int) -> None:
        del self.pending[seq]
        self.drained.set()

    def ack_queued_copies(self, seq: int) -> None:
        for _ in range(self.queued_copies.pop(seq, 0)):
            metrics.CHUNKS.labels("duplicate", self.served.model_version).inc()
            self.ack(seq, duplicate=True)
