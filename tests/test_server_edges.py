"""Edges an outside client finds, each checked from a client built from the .proto alone (raw_client.py)."""
import re
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from moodstream.server.app import ConnectionLimits
from moodstream.server.service import ServiceSettings
from raw_client import acks, client_for
from server_harness import make_chunks
from test_wire import FreezingProxy
from waiting import wait_for

GOOD = make_chunks(1, seed=3)[0]
Code = grpc.StatusCode
ROOT = Path(__file__).resolve().parent.parent


MODEL_SEED = 4  # the conftest's `model` fixture: the tiny model of this seed
SERVER_OPTIONS = {"settings": ServiceSettings(max_seq_ahead=16, max_pending_chunks=3, redis_retry_seconds=2)}


# -- calls that never end --------------------------------------------------------------------------

UNARY_REQUEST_METHODS = ["/moodstream.v1.Screening/GetScore", "/moodstream.v1.Screening/Subscribe",
                         "/moodstream.v1.Screening/ListSessions", "/moodstream.v1.Screening/GetModelInfo",
                         "/grpc.health.v1.Health/Check"]


@pytest.mark.parametrize("token", ["admin", None], ids=["with a token", "without a token"])
def test_calls_closed_without_a_request_message_end_at_once(server, channel, pool, tokens, token):
    raw = client_for(channel, pool, tokens, token)
    started = time.monotonic()
    calls = [raw.zero_message_call(path) for path in UNARY_REQUEST_METHODS for _ in range(25)]  # no deadline
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call.result(timeout=20)
        assert info.value.code() == Code.INVALID_ARGUMENT, info.value.details()
        assert "without a request message" in info.value.details()
    assert time.monotonic() - started < 20
    # the connection is still good for a proper call
    health = channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=10)
    assert health == b"\x08\x01"  # status: SERVING


def test_a_connection_is_cut_after_its_age_and_grace(start_server, tokens, pool):
    limits = ConnectionLimits(max_age_seconds=1.0, max_age_grace_seconds=1.0)
    with start_server.running(limits=limits) as running, \
            grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        raw = client_for(channel, pool, tokens, "admin")
        started = time.monotonic()
        updates = raw.server_stream("Subscribe", raw.request("Subscribe", participant_id="p1"), timeout=60)
        with pytest.raises(grpc.RpcError) as info:
            next(updates)  # no update ever comes: only the age limit can end this call
        assert info.value.code() == Code.UNAVAILABLE
        assert time.monotonic() - started < 15


class PingWatchingProxy(FreezingProxy):
    """A FreezingProxy that reads the HTTP/2 frames it relays, to tell when a PING of the server was
    answered by the client."""

    PING, ACK = 6, 1  # HTTP/2 frame type and flag (RFC 9113)

    def __init__(self, target_port: int):
        self.opened = time.monotonic()
        self._sent_pings: dict[bytes, float] = {}  # payload of a server PING -> when it passed
        self.answered_pings: list[float] = []  # when each server PING the client acknowledged had passed
        super().__init__(target_port)

    def _relay(self, source, sink, from_server: bool):
        super()._relay(source, FrameTap(sink, self._frame, from_server), from_server)

    def _frame(self, kind: int, flags: int, payload: bytes, from_server: bool) -> None:
        if kind != self.PING:
            return
        if from_server and not flags & self.ACK:
            self._sent_pings[payload] = time.monotonic()
        elif not from_server and flags & self.ACK and payload in self._sent_pings:
            self.answered_pings.append(self._sent_pings.pop(payload))

    def answered_a_ping_sent_after(self, seconds: float) -> bool:
        return any(sent - self.opened >= seconds for sent in self.answered_pings)


class FrameTap:
    """The sending side of one relay direction: forwards what it is given and reports each whole HTTP/2
    frame (type, flags, payload) in it."""

    CLIENT_PREFACE = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # what a client sends before its first frame
    HEADER = 9  # length (3 bytes), type, flags, stream id (4 bytes)

    def __init__(self, sink, on_frame, from_server: bool):
        self.sink, self.on_frame, self.from_server = sink, on_frame, from_server
        self.skip = 0 if from_server else self.CLIENT_PREFACE
        self.pending = b""

    def sendall(self, data: bytes) -> None:
        self.sink.sendall(data)
        skipped = min(self.skip, len(data))
        self.skip -= skipped
        self.pending += data[skipped:]
        while len(self.pending) >= self.HEADER:
            end = self.HEADER + int.from_bytes(self.pending[:3], "big")
            if len(self.pending) < end:
                return
            self.on_frame(self.pending[3], self.pending[4], self.pending[self.HEADER:end], self.from_server)
            self.pending = self.pending[end:]


def test_the_server_drops_a_half_open_connection_after_its_keepalive_and_timeout(start_server, tokens, pool):
    limits = ConnectionLimits(keepalive_seconds=1.0, keepalive_timeout_seconds=1.0)
    with start_server.running(limits=limits) as running:
        proxy = PingWatchingProxy(running.port)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
                raw = client_for(channel, pool, tokens, "admin")
                call = raw.server_stream("Subscribe", raw.request("Subscribe", participant_id="p1"), timeout=60)
                # the call is open and the server's keepalive ping, due after keepalive_seconds, was answered
                wait_for(lambda: proxy.answered_a_ping_sent_after(limits.keepalive_seconds),
                         "an answered keepalive ping", timeout=30)
                assert not proxy.server_hung_up.is_set()
                proxy.frozen.set()
                started = time.monotonic()
                hung_up = proxy.server_hung_up.wait(30)
                waited = time.monotonic() - started
                call.cancel()
        finally:
            proxy.close()
    assert hung_up and waited <= limits.keepalive_seconds + limits.keepalive_timeout_seconds + 5, waited


def test_an_idle_connection_is_closed(start_server, tokens, pool):
    limits = ConnectionLimits(max_idle_seconds=1.0)
    with start_server.running(limits=limits) as running, \
            grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        states = []
        channel.subscribe(states.append)
        raw = client_for(channel, pool, tokens, "admin")
        with pytest.raises(grpc.RpcError):
            raw.unary("GetScore", raw.request("GetScore", session_id="any"), timeout=10)  # NOT_FOUND: connected
        # grpc delivers connectivity changes on its own thread, so each one is waited for
        connected = wait_for_state(states, grpc.ChannelConnectivity.READY, after=0)
        wait_for_state(states, grpc.ChannelConnectivity.IDLE, after=connected)  # the server closed it (GOAWAY)
        channel.unsubscribe(states.append)


def wait_for_state(states, wanted, after, seconds=10.0):
    deadline = time.monotonic() + seconds
    while wanted not in states[after:]:
        assert time.monotonic() < deadline, (wanted, states)
        time.sleep(0.05)
    return states.index(wanted, after)


def subscribers_active() -> float:
    return REGISTRY.get_sample_value("moodstream_subscribers_active") or 0.0


def test_concurrent_calls_per_connection_are_bounded(start_server, tokens, pool):
    limits = ConnectionLimits(max_concurrent_streams=4)
    with start_server.running(limits=limits) as running, \
            grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        raw = client_for(channel, pool, tokens, "admin")
        before = subscribers_active()
        held = [raw.server_stream("Subscribe", raw.request("Subscribe", participant_id=f"p{i}"), timeout=60)
                for i in range(1, 5)]
        wait_for(lambda: subscribers_active() >= before + 4, "the four held calls open on the server", timeout=30)
        with pytest.raises(grpc.RpcError) as info:  # the fifth call waits for a free stream
            raw.unary("GetScore", raw.request("GetScore", session_id="any"), timeout=2)
        assert info.value.code() == Code.DEADLINE_EXCEEDED
        held[0].cancel()
        with pytest.raises(grpc.RpcError) as info:  # a stream is free again: answered (no such session)
            raw.unary("GetScore", raw.request("GetScore", session_id="any"), timeout=10)
        assert info.value.code() == Code.NOT_FOUND
        for call in held[1:]:
            call.cancel()


# -- acks ------------------------------------------------------------------------------------------

def test_every_chunk_received_gets_exactly_one_ack(server, channel, pool, tokens):
    raw = client_for(channel, pool, tokens, "admin")
    sent = [0, 0, 0, 1, 1, 0, 2]
    requests = [raw.header("one-ack", "p1")] + [raw.chunk(seq, GOOD) for seq in sent] + [raw.end(2)]
    received = acks(raw.bidi("Stream", requests))
    assert sorted(seq for seq, _ in received) == sorted(sent)
    assert sorted(seq for seq, duplicate in received if not duplicate) == [0, 1, 2]


def test_a_backlog_is_paced_not_refused(server, channel, pool, tokens):
    """With 3 chunks buffered at most, 12 sent at once are all applied: the server stops reading meanwhile."""
    raw = client_for(channel, pool, tokens, "admin")
    chunks = make_chunks(12, seed=5)
    requests = [raw.header("backlog", "p1")] + [raw.chunk(seq, pcm) for seq, pcm in enumerate(chunks)] + [raw.end(11)]
    received = acks(raw.bidi("Stream", requests))
    assert received == [(seq, False) for seq in range(12)]


def test_a_full_buffer_waiting_for_a_missing_seq_is_still_refused(server, channel, pool, tokens):
    raw = client_for(channel, pool, tokens, "admin")
    requests = [raw.header("abuse", "p1")] + [raw.chunk(seq, GOOD) for seq in range(1, 6)]
    with pytest.raises(grpc.RpcError) as info:
        list(raw.bidi("Stream", requests))
    assert info.value.code() == Code.RESOURCE_EXHAUSTED and "send the missing chunk first" in info.value.details()


def test_a_stream_closed_with_a_gap_names_the_missing_seqs(server, channel, pool, tokens):
    raw = client_for(channel, pool, tokens, "admin")
    responses = raw.bidi("Stream", [raw.header("gap-close", "p1"), raw.chunk(1, GOOD), raw.chunk(3, GOOD)])
    with pytest.raises(grpc.RpcError) as info:
        list(responses)
    assert info.value.code() == Code.FAILED_PRECONDITION
    assert "seq(s) 0, 2 never arrived" in info.value.details() and "resend from seq 0" in info.value.details()
    # after applied chunks too
    responses = raw.bidi("Stream", [raw.header("gap-close-2", "p1"), raw.chunk(0, GOOD), raw.chunk(2, GOOD)])
    with pytest.raises(grpc.RpcError) as info:
        list(responses)
    assert info.value.code() == Code.FAILED_PRECONDITION and "seq(s) 1 never arrived" in info.value.details()


def stream_until_refused(raw, requests) -> tuple[list, grpc.RpcError]:
    """Every response of a Stream call the server refuses, and the refusal."""
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for response in raw.bidi("Stream", requests, timeout=30):
            received.append(response)
    return received, info.value


# What follows two valid chunks, sent at once behind them: the refusal must not overtake their acks.
REFUSED_AFTER_TWO_CHUNKS = {
    "End far ahead": (lambda raw: [raw.end(10**6)], Code.OUT_OF_RANGE, "too far ahead"),
    "End with a gap": (lambda raw: [raw.end(4)], Code.FAILED_PRECONDITION, "were never sent"),
    "odd byte count": (lambda raw: [raw.chunk(2, GOOD[:-1])], Code.INVALID_ARGUMENT, "even byte count"),
    "second header": (lambda raw: [raw.header("x", "p1")], Code.INVALID_ARGUMENT, "only the first message"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_AFTER_TWO_CHUNKS))
def test_valid_chunks_before_a_refused_message_are_acked_and_stored_first(server, channel, pool, tokens, case):
    then, code, fragment = REFUSED_AFTER_TWO_CHUNKS[case]
    raw = client_for(channel, pool, tokens, "admin")
    session = "before-refusal-" + case.replace(" ", "-").lower()
    for attempt in range(3):  # the same answer every time: the applier settles the input before the refusal
        received, refusal = stream_until_refused(
            raw, [raw.header(session, "p1"), raw.chunk(0, GOOD), raw.chunk(1, GOOD), *then(raw)])
        assert (refusal.code(), fragment in refusal.details()) == (code, True), refusal.details()
        assert acks(received) == [(0, attempt > 0), (1, attempt > 0)], (attempt, received)
    stored = raw.unary("GetScore", raw.request("GetScore", session_id=session))
    assert (stored.seq, stored.segments) == (1, 2)
    state = pool.FindEnumTypeByName("moodstream.v1.SessionState").values_by_number[stored.session_state].name
    assert state != "SESSION_STATE_ENDED"  # the End of a refused stream is not kept


def test_a_chunk_after_end_is_refused_and_the_chunks_before_the_end_are_kept(server, channel, pool, tokens):
    # Refused when the server reads it before it has stored the End (here: sent with it, at once); one
    # sent later finds the call already ended OK.
    raw = client_for(channel, pool, tokens, "admin")
    received, refusal = stream_until_refused(
        raw, [raw.header("chunk-after-end", "p1"), raw.chunk(0, GOOD), raw.end(0), raw.chunk(1, GOOD)])
    assert (refusal.code(), refusal.details()) == (Code.INVALID_ARGUMENT, "chunk 1 comes after End(last_seq=0)")
    assert acks(received) == [(0, False)]
    stored = raw.unary("GetScore", raw.request("GetScore", session_id="chunk-after-end"))
    state = pool.FindEnumTypeByName("moodstream.v1.SessionState").values_by_number[stored.session_state].name
    assert (stored.seq, state) == (0, "SESSION_STATE_INTERRUPTED")  # the End of a refused stream is not kept


def test_an_end_below_a_chunk_already_sent_says_that_chunk_came_first(server, channel, pool, tokens):
    raw = client_for(channel, pool, tokens, "admin")
    received, refusal = stream_until_refused(
        raw, [raw.header("end-below-sent", "p1"), raw.chunk(0, GOOD), raw.chunk(2, GOOD), raw.end(0)])
    assert refusal.code() == Code.INVALID_ARGUMENT
    assert refusal.details() == ("End(last_seq=0) came after chunk 2 was sent: last_seq must be the highest "
                                 "seq sent, at least 2")
    assert acks(received) == [(0, False)]  # chunk 0 came before the End; chunk 2 still waits for seq 1
    assert raw.unary("GetScore", raw.request("GetScore", session_id="end-below-sent")).seq == 0


# -- what a refusal says and leaves ----------------------------------------------------------------

def test_a_foreign_session_and_a_foreign_participant_get_the_same_answer(server, channel, pool, tokens):
    admin = client_for(channel, pool, tokens, "admin")
    assert acks(admin.bidi("Stream", [admin.header("held-by-p2", "p2"), admin.chunk(0, GOOD), admin.end(0)]))
    agent_p1 = client_for(channel, pool, tokens, "agent-p1")
    answers = []
    for session, participant in (("held-by-p2", "p1"), ("free-session", "p2")):
        with pytest.raises(grpc.RpcError) as info:
            list(agent_p1.bidi("Stream", [agent_p1.header(session, participant), agent_p1.chunk(0, GOOD)]))
        answers.append((info.value.code(), info.value.details().replace(session, "S").replace(participant, "P")))
    assert answers[0] == answers[1] == (Code.PERMISSION_DENIED, "this token may not stream session 'S' for "
                                                                 "participant 'P'")
    assert "another" not in answers[0][1]


# -- the contract is discoverable ------------------------------------------------------------------

def test_reflection_carries_the_limits_and_the_meaning_of_an_ack(server, channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="moodstream.v1.Screening")
    response = next(stub.ServerReflectionInfo(iter([request]), timeout=10))
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in response.file_descriptor_response.file_descriptor_proto]
    comments = "\n".join(location.leading_comments + location.trailing_comments + "\n".join(
        location.leading_detached_comments) for file in files for location in file.source_code_info.location)
    for fact in ("authorization: Bearer <token>", "1 MiB", "1 to 10 s", "At most 32 chunks", "64 seqs ahead",
                 "The Ack, not an OK status, means stored", "exactly one Ack", "256 concurrent calls"):
        assert fact in comments, fact


def reflected_files(channel, symbol: str) -> list[descriptor_pb2.FileDescriptorProto]:
    """What grpcurl asks before `describe SYMBOL`: the file holding the symbol; an AssertionError with the
    server's reflection error where it has none."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    response = next(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert response.WhichOneof("message_response") == "file_descriptor_response", \
        f"{symbol}: {response.error_response.error_message}"
    return [descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in response.file_descriptor_response.file_descriptor_proto]


def test_reflection_finds_every_symbol_the_docs_describe_methods_included(server, channel):
    text = (ROOT / "docs" / "clinic-api.md").read_text()
    described = re.findall(r"grpcurl [^\n]*\bdescribe (\S+)", text)
    assert "moodstream.v1.Screening.Stream" in described
    for symbol in [*described, "moodstream.v1.Screening.ListSessions", "grpc.health.v1.Health.Check"]:
        files = reflected_files(channel, symbol)
        methods = {f"{file.package}.{s.name}.{m.name}" for file in files for s in file.service for m in s.method}
        assert symbol in methods or symbol in {f"{file.package}.{s.name}" for file in files for s in file.service}
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    for unknown in ("moodstream.v1.Screening.NoSuchMethod", "moodstream.v1.NoSuchService.Stream"):
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=unknown)
        response = next(stub.ServerReflectionInfo(iter([request]), timeout=10))
        assert response.error_response.error_code == Code.NOT_FOUND.value[0], unknown
