"""The moodstream.v1.Screening gRPC service.

Stream: authenticate, validate the header, claim the session in Redis, then hand every chunk to
the call's SessionStream (server/session_stream.py), which applies chunks strictly in seq order and
acks each one only once it is stored. The server keeps no session state beyond one open stream, so
any replica can take a session over after a reconnect. ListSessions pages through the session
directory of every model version (server/paging.py).
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import dataclass

import grpc
import redis.exceptions

from moodstream import SCREENING_NOTICE
from moodstream.ids import DEVICE_PATTERN, ID_PATTERN, ID_RULE
from moodstream.server import metrics
from moodstream.server.auth import AuthError, Principal, TokenAuthenticator
from moodstream.server.enrol_rpc import EnrolmentRPC
from moodstream.server.model_repository import ModelRepository, ServedVersion
from moodstream.server.paging import (DEFAULT_PAGE_SIZE, SESSION_STATE_MESSAGES, SESSION_STATE_NAMES,
                                      decode_page_token, encode_page_token, merge_version_pages, summary_message,
                                      time_bound)
from moodstream.server.rpc_errors import (READ_BUDGET_SECONDS, StreamAbort, blocking_read_ms, read_deadline,
                                         redis_call)
from moodstream.server.session_stream import SessionStream, stream_refused
from moodstream.server.state_cache import DEFAULT_STATE_CACHE_MB, ScorerStateCache
from moodstream.server.redis_connection import DEFAULT_RETRY_SECONDS
from moodstream.server.session_listing import MAX_PAGE_SIZE
from moodstream.server.store import SessionStore
from moodstream.server.store_records import SessionNotFoundError
from moodstream.server.store_values import MAX_SEQ, parse_offset
from moodstream.v1 import moodstream_pb2 as pb
from moodstream.v1 import moodstream_pb2_grpc as pb_grpc
from moodstream.wire import SAMPLE_RATE, score_from_dict

log = logging.getLogger("moodstream.server")


@dataclass
class ServiceSettings:
    max_seq_ahead: int = 64          # a chunk further ahead of the applied seq is refused
    max_pending_chunks: int = 32     # chunks buffered per stream waiting for a gap or the encoder
    redis_retry_seconds: float = DEFAULT_RETRY_SECONDS  # the store's client rides out a Redis outage this long
    subscribe_block_ms: int = 1000
    token_check_seconds: float = 1.0   # an open call notices a revoked token within this long
    read_budget_seconds: float = READ_BUDGET_SECONDS  # a read call is UNAVAILABLE when Redis gives no answer this long
    state_cache_mb: float = DEFAULT_STATE_CACHE_MB  # restored scorer states kept in memory (0 = off)


def _check_id(name: str, value: str, pattern: re.Pattern = ID_PATTERN) -> None:
    if not pattern.fullmatch(value):
        raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{name} {value[:80]!r} is invalid: use {ID_RULE}")


async def _messages(*requests: pb.StreamRequest):
    for request in requests:
        yield request


class ScreeningService(EnrolmentRPC, pb_grpc.ScreeningServicer):
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

    async def session_store(self, session_id: str, deadline: float | None = None) -> SessionStore:
        """The store of the version a session started under (the current one for sessions that predate
        recorded versions)."""
        version = await redis_call(lambda: self.store.session_model_version(session_id), deadline)
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

    def _read_deadline(self, context, waits_seconds: float = 0.0) -> float:
        return read_deadline(context, self.settings.read_budget_seconds, waits_seconds)

    async def _readable_participant(self, principal: Principal, session_id: str, deadline: float) -> str:
        owner = await redis_call(lambda: self.store.session_owner(session_id), deadline)
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
            tasks = [asyncio.create_task(session.read_until_refused(request_iterator), name="stream-reader"),
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
                if applier in done:
                    # Acks of chunks stored before a failure go out before the failure ends the call.
                    while not session.responses.empty():
                        yield session.responses.get_nowait()
                for task in (reader, applier):
                    if task in done and task.exception() is not None:
                        raise task.exception()
                if applier in done:
                    return
                if reader in done and session.input_closed:
                    reader = asyncio.get_running_loop().create_future()  # wait on the applier alone
        except StreamAbort as error:
            metrics.CHUNKS.labels("rejected", session.served.model_version if session else "").inc()
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
        session = None
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
            metrics.CHUNKS.labels("rejected", session.served.model_version if session else "").inc()
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
            deadline = self._read_deadline(context)
            participant = await self._readable_participant(principal, request.session_id, deadline)
            store = await self.session_store(request.session_id, deadline)
            latest = await redis_call(lambda: store.latest_score(request.session_id, participant), deadline)
            if latest is None:
                raise StreamAbort(grpc.StatusCode.NOT_FOUND, f"session {request.session_id!r} has no score yet")
            state = await redis_call(lambda: store.session_state(request.session_id, participant), deadline)
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
                deadline = self._read_deadline(context)
                participant = await self._readable_participant(principal, request.session_id, deadline)
                source = {"session_id": request.session_id, "participant_id": participant}
                store = await self.session_store(request.session_id, deadline)
            else:
                _check_id("participant_id", request.participant_id)
                if not principal.may_read(request.participant_id):
                    raise StreamAbort(grpc.StatusCode.PERMISSION_DENIED,
                                      f"this token may not read participant {request.participant_id!r}")
                source = {"participant_id": request.participant_id}
                store = self.store  # a participant's stream is one for every version
            if offset == "$":
                # Pin "now" once, so a reconnect after this point misses nothing.
                batch = await redis_call(lambda: store.read_updates(after_offset="$", **source),
                                         self._read_deadline(context))
                offset = batch.next_offset
            while True:
                self._check_still_valid(principal)
                current = offset
                block_ms = blocking_read_ms(context, self.settings.subscribe_block_ms)
                if block_ms is None:
                    await asyncio.sleep((context.time_remaining() or 0.0) + 1.0)  # gRPC ends the call at its deadline
                    return
                batch = await redis_call(lambda: store.read_updates(after_offset=current, block_ms=block_ms, **source),
                                         self._read_deadline(context, waits_seconds=block_ms / 1000))
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
            after = time_bound("active_after_unix", request.active_after_unix)
            before = time_bound("active_before_unix", request.active_before_unix)
            if after and before and before < after:
                raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                                  "active_before_unix is earlier than active_after_unix: the window is empty")
            cursor = decode_page_token(request.page_token, request)
            page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            summaries, next_cursor = await redis_call(lambda: self._list_sessions(
                participants, states={SESSION_STATE_NAMES[number] for number in request.states}, active_after=after, active_before=before,
                page_size=page_size, cursor=cursor), self._read_deadline(context))
            return pb.ListSessionsResponse(sessions=[summary_message(summary) for summary in summaries],
                                           next_page_token=encode_page_token(next_cursor, request))
        except StreamAbort as error:
            await context.abort(error.code, str(error))

    async def _list_sessions(self, participants, *, page_size: int, cursor, **filters):
        """One directory page over every model version (paging.merge_version_pages)."""
        versions = set(self.repository.held()) | await self.store.stored_model_versions()
        pages = [await self.store_for(version).list_sessions(participants, page_size=page_size, cursor=cursor,
                                                             **filters)
                 for version in sorted(versions)]
        return merge_version_pages(pages, page_size)

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
    if config.calibration_replicates:
        info.interval_level = config.interval_level
    return info
