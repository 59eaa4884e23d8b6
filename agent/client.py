"""Delivering a session's chunks over `Screening.Stream`, at least once, until acked.

The outbox is the source of truth: each connection sends the session header,
every unacknowledged chunk in seq order, then new chunks as capture stores
them, then `End(last_seq)` once capture is done. A chunk leaves the outbox only
when the server's `Ack` for its seq arrives. Transport failures reconnect with
exponential backoff and jitter (bounded in total time) and resend everything
still unacknowledged; the server is idempotent by (session, seq).

A dead connection is found by HTTP/2 keepalive (moodstream.wire): the call ends
with UNAVAILABLE within about 30 s and the agent reconnects, even while it only
waits for acks.

Failover: a target may name several servers (replicas sharing one Redis, in
the order to try them). Each failed or broken connection moves on to the next
one, round-robin; since servers keep no session state, whichever replica
answers resumes the session from Redis.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from moodstream.backoff import Backoff
from moodstream.v1 import moodstream_pb2 as pb
from moodstream.v1 import moodstream_pb2_grpc as pb_grpc
from moodstream.wire import SAMPLE_RATE, bearer_metadata, open_channel, session_metadata, speech_settings_of

from . import events as ev
from .events import EventHub, Score
from .outbox import Outbox

# Codes where sending the same thing again cannot succeed: stop and say why.
NON_RETRYABLE_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DATA_LOSS,
})
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class AgentError(RuntimeError):
    """The agent cannot finish the session; the message says why and what is left where."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


class ServerRefused(AgentError):
    """The server answered with a non-retryable status (bad token, bad input, ...)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"server refused the stream: {code.name}: {details}")
        self.code = code
        self.details = details


class DeliveryGaveUp(AgentError):
    """The server stayed unreachable for longer than the retry budget."""


class DeliveryAborted(AgentError):
    """Delivery was stopped on request; unacknowledged chunks stay in the outbox."""


def split_addresses(*values: str) -> tuple[str, ...]:
    """HOST:PORT addresses from values that may each hold several, comma-separated (order kept)."""
    addresses: list[str] = []
    for value in values:
        for address in value.split(","):
            address = address.strip()
            if address and address not in addresses:
                addresses.append(address)
    if not addresses:
        raise ValueError("no server address given")
    return tuple(addresses)


@dataclass(frozen=True)
class ServerTarget:
    address: str                  # HOST:PORT, or several comma-separated (replicas to fail over to, in order)
    token: str | None = None      # sent as `authorization: Bearer <token>`
    tls_ca: str | Path | None = None  # PEM file of the CA to trust; enables TLS

    @property
    def addresses(self) -> tuple[str, ...]:
        return split_addresses(self.address)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(self.token)

    def channel(self, address: str | None = None) -> grpc.Channel:
        """A channel to `address` (one of :attr:`addresses`; default the first)."""
        try:
            return open_channel(address or self.addresses[0], tls_ca=self.tls_ca)
        except OSError as error:
            raise AgentError(f"cannot read the TLS CA file {self.tls_ca}: {error.strerror or error}") from None


@dataclass(frozen=True)
class ModelInfo:
    """What a server says about its model (`Screening.GetModelInfo`)."""

    model_version: str
    threshold: float
    sample_rate: int
    speech: dict | None  # the speech settings the model was trained with; None if it records none
    interval_level: float | None = None  # the level of the interval around every score; None: scores carry none


def fetch_model_info(target: ServerTarget, timeout: float = 5.0, model_version: str = "") -> ModelInfo:
    """Ask the first server of `target` that answers (about `model_version`, "" = the version new sessions
    get); AgentError saying why when none does."""
    failures = []
    for address in target.addresses:
        channel = target.channel(address)
        try:
            reply = pb_grpc.ScreeningStub(channel).GetModelInfo(
                pb.GetModelInfoRequest(model_version=model_version), metadata=target.metadata(), timeout=timeout)
        except grpc.RpcError as error:
            failures.append(f"{address}: {error.code().name}: {error.details()}")
            continue
        finally:
            channel.close()
        return ModelInfo(reply.model_version, reply.threshold, reply.sample_rate, speech_settings_of(reply),
                         reply.interval_level if reply.HasField("interval_level") else None)
    raise AgentError("cannot ask the server for its model: " + "; ".join(failures))


@dataclass(frozen=True)
class RetryPolicy:
    initial_delay_seconds: float = 0.5
    max_delay_seconds: float = 20.0
    # How long the server may stay unreachable (counted from the first failure after
    # the last progress) before the agent gives up; the outbox keeps the chunks.
    max_total_seconds: float = 300.0

    @property
    def backoff(self) -> Backoff:
        # "Equal jitter": at least half the exponential step, so agents that lost the same
        # server do not come back in lockstep, yet none retries immediately.
        return Backoff(base_seconds=self.initial_delay_seconds, cap_seconds=self.max_delay_seconds, jitter=0.5)


@dataclass
class DeliveryStats:
    sent: int = 0
    acked: int = 0
    duplicates: int = 0
    reconnects: int = 0
    scores: list[Score] = field(default_factory=list)

    @property
    def latest_score(self) -> Score | None:
        return self.scores[-1] if self.scores else None


class _TransientStreamFailure(Exception):
    pass


@dataclass
class _Connection:
    start_seq: int
    closed: threading.Event = field(default_factory=threading.Event)
    call: object = None
    sent: int = 0
    acked: int = 0
    end_sent: bool = False
    empty_session: bool = False
    progressed: bool = False


class SessionDelivery:
    """Delivers one session from the outbox; :meth:`run` returns once everything is acked.

    `capture_done` is set by the producer once it will store no more chunks for the
    session (so End can be sent); call :meth:`wake` after each `put`.
    """

    def __init__(
        self,
        outbox: Outbox,
        session_id: str,
        target: ServerTarget,
        *,
        hub: EventHub,
        capture_done: threading.Event,
        abort: threading.Event | None = None,
        retry: RetryPolicy = RetryPolicy(),
        model_version: str = "",
        max_in_flight: int = 16,
        rng: random.Random | None = None,
    ):
        session = outbox.session(session_id)
        if session is None:
            raise ValueError(f"session {session_id!r} is not in the outbox")
        self.outbox = outbox
        self.session_id = session_id
        self.participant_id = session.participant_id
        self.device_id = session.device_id
        self.target = target
        self.addresses = target.addresses
        self._address_index = 0
        self.hub = hub
        self.capture_done = capture_done
        self.abort = abort or threading.Event()
        self.retry = retry
        self.model_version = model_version
        self.max_in_flight = max(1, max_in_flight)
        self.stats = DeliveryStats()
        self._rng = rng or random.Random()
        self._wakeup = threading.Condition()

    @property
    def address(self) -> str:
        """The server the next (or current) connection goes to."""
        return self.addresses[self._address_index]

    def wake(self) -> None:
        with self._wakeup:
            self._wakeup.notify_all()

    def _wait(self, seconds: float) -> None:
        with self._wakeup:
            self._wakeup.wait(seconds)

    # -- the loop over connections ------------------------------------------------

    def run(self) -> DeliveryStats:
        attempt = 0
        waits = self.retry.backoff.waits(self._rng)
        outage_started: float | None = None
        while True:
            if self.abort.is_set():
                raise DeliveryAborted(self._left_behind("delivery stopped"))
            session = self.outbox.session(self.session_id)
            if session.completed and self.outbox.pending_count(self.session_id) == 0:
                return self.stats
            if self.capture_done.is_set() and session.next_seq == 0:
                return self.stats  # no chunk was ever made: nothing to send, nothing to end
            connection = self._new_connection()
            try:
                self._connect_once(connection)
                if connection.end_sent and self.outbox.pending_count(self.session_id) == 0:
                    self.outbox.mark_completed(self.session_id)
                    return self.stats
                if connection.empty_session:
                    return self.stats
                reason = "the server closed the stream before acknowledging every chunk"
            except grpc.RpcError as error:
                code = error.code()
                if code in NON_RETRYABLE_CODES:
                    raise ServerRefused(code, error.details() or "") from None
                if self.abort.is_set():
                    raise DeliveryAborted(self._left_behind("delivery stopped")) from None
                if connection.empty_session:
                    return self.stats
                reason = f"{code.name}: {error.details() or 'transport failure'}"
            except _TransientStreamFailure as failure:
                reason = str(failure)
            except AgentError:
                raise
            if connection.progressed:  # the server was reachable and working: a new outage starts now
                attempt, outage_started = 0, None
                waits = self.retry.backoff.waits(self._rng)
            now = time.monotonic()
            if outage_started is None:
                outage_started = now
            waited = now - outage_started
            if waited >= self.retry.max_total_seconds:
                raise DeliveryGaveUp(self._left_behind(
                    f"gave up reaching {', '.join(self.addresses)} after {waited:.1f} s ({reason})"
                ))
            # The last wait is cut to what the budget has left, so the agent tries for as long as it was told.
            delay = min(next(waits), self.retry.max_total_seconds - waited)
            attempt += 1
            self.stats.reconnects += 1
            failed = self.address
            self._address_index = (self._address_index + 1) % len(self.addresses)
            self.hub.emit(ev.RETRY, reason=reason, attempt=attempt, delay_seconds=round(delay, 2),
                          pending=self.outbox.pending_count(self.session_id), failed_server=failed,
                          server=self.address)
            self.abort.wait(delay)

    def _left_behind(self, why: str) -> str:
        pending = self.outbox.pending_count(self.session_id)
        return (
            f"{why}; {pending} unacknowledged chunk(s) of session {self.session_id} stay in the "
            f"outbox at {self.outbox.directory}: run the agent again with --session {self.session_id} "
            f"(or --flush) to deliver them"
        )

    # -- one connection -------------------------------------------------------------

    def _new_connection(self) -> _Connection:
        # next_seq first: a chunk the capture thread stores between the two reads is then
        # found by the second (the other order skipped it: the server was sent seq 1 first).
        next_seq = self.outbox.session(self.session_id).next_seq
        lowest = self.outbox.lowest_pending_seq(self.session_id)
        return _Connection(start_seq=lowest if lowest is not None else next_seq)

    def _connect_once(self, connection: _Connection) -> None:
        """One Stream call; returns when the server closes it, raises grpc.RpcError on failure."""
        channel = self.target.channel(self.address)
        # Keepalive ends a dead connection's call; this only ends a live one when delivery is stopped.
        stopper = threading.Thread(target=self._cancel_on_abort, args=(connection,), daemon=True,
                                   name="moodstream-agent-abort")
        try:
            stub = pb_grpc.ScreeningStub(channel)
            call = stub.Stream(self._requests(connection),
                               metadata=self.target.metadata() + session_metadata(self.session_id))
            connection.call = call
            stopper.start()
            for response in call:
                self._handle(response, connection)
        finally:
            connection.closed.set()
            if connection.call is not None:
                connection.call.cancel()  # stops the request iterator if the server went first
            self.wake()
            channel.close()

    def _cancel_on_abort(self, connection: _Connection) -> None:
        while not connection.closed.wait(0.5):
            if self.abort.is_set():
                connection.call.cancel()
                return

    def _header(self, start_seq: int) -> pb.StreamRequest:
        return pb.StreamRequest(header=pb.SessionHeader(
            session_id=self.session_id,
            participant_id=self.participant_id,
            device_id=self.device_id,
            sample_rate=SAMPLE_RATE,
            encoding=pb.AUDIO_ENCODING_PCM_S16LE,
            model_version=self.model_version,
            resume_from_seq=start_seq,
        ))

    def _requests(self, connection: _Connection):
        yield self._header(connection.start_seq)
        next_seq = connection.start_seq
        while not connection.closed.is_set() and not self.abort.is_set():
            if connection.sent - connection.acked >= self.max_in_flight:
                self._wait(0.5)
                continue
            chunk = self.outbox.claim_next(self.session_id, next_seq)
            if chunk is not None:
                next_seq = chunk.seq + 1
                connection.sent += 1
                self.stats.sent += 1
                self.hub.emit(ev.SENT, seq=chunk.seq)
                yield pb.StreamRequest(chunk=pb.Chunk(
                    seq=chunk.seq,
                    start_seconds=chunk.start_seconds,
                    pcm=chunk.pcm,
                    speech=pb.SpeechStats(
                        speech_seconds=chunk.speech_seconds,
                        dropped_seconds=chunk.dropped_seconds,
                        vad_frames=chunk.vad_frames,
                    ),
                ))
                continue
            if self.capture_done.is_set():
                # Re-read after seeing capture_done: a put may have landed after claim_next.
                session = self.outbox.session(self.session_id)
                if next_seq >= session.next_seq:
                    if session.next_seq == 0:
                        # No chunk at all: End cannot name a last seq, so the stream is dropped.
                        connection.empty_session = True
                        if connection.call is not None:
                            connection.call.cancel()
                        return
                    connection.end_sent = True
                    yield pb.StreamRequest(end=pb.End(last_seq=session.next_seq - 1))
                    return  # half-close; the server closes once everything is acked
                continue
            self._wait(0.5)

    def _handle(self, response: pb.StreamResponse, connection: _Connection) -> None:
        kind = response.WhichOneof("message")
        if kind == "ack":
            seq = int(response.ack.seq)
            self.outbox.ack(self.session_id, seq)
            connection.acked += 1
            connection.progressed = True
            self.stats.acked += 1
            self.stats.duplicates += bool(response.ack.duplicate)
            self.hub.emit(ev.ACK, seq=seq, duplicate=bool(response.ack.duplicate),
                          pending=self.outbox.pending_count(self.session_id))
            self.wake()
        elif kind == "score":
            score = Score.from_proto(response.score)
            self.stats.scores.append(score)
            connection.progressed = True
            self.hub.emit(ev.SCORE, **score.event_data())
        elif kind == "error":
            code = _CODES_BY_NUMBER.get(int(response.error.code), grpc.StatusCode.UNKNOWN)
            message = response.error.message or code.name
            if code in NON_RETRYABLE_CODES:
                raise ServerRefused(code, f"{message} (seq {response.error.seq})")
            raise _TransientStreamFailure(f"server error {code.name}: {message}")
