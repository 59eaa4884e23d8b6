"""Every bad input gets its gRPC status code and stores nothing."""
import grpc
import pytest

from moodstream.server.service import ServiceSettings
from moodstream.v1 import moodstream_pb2 as pb
from server_harness import chunk, end, header, make_chunks, redis_keys, stream, stub_for

GOOD = make_chunks(1, seed=0)[0]
Code = grpc.StatusCode


def timed_chunk(seq: int, start_seconds: float) -> pb.StreamRequest:
    return pb.StreamRequest(chunk=pb.Chunk(seq=seq, start_seconds=start_seconds, pcm=GOOD))


MODEL_SEED = 2  # the conftest's `model` fixture: the tiny model of this seed


@pytest.fixture
def server(start_server):
    """A server of its own per test: each test's checks that nothing was stored start from an empty Redis."""
    return start_server(settings=ServiceSettings(max_seq_ahead=16, max_pending_chunks=3, redis_retry_seconds=2))


def expect(stub, requests, metadata, code, fragment):
    with pytest.raises(grpc.RpcError) as info:
        stream(stub, requests, metadata, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert fragment in info.value.details()
    return info.value


STREAM_CASES = {
    "no header": ([chunk(0, GOOD)], Code.INVALID_ARGUMENT, "first message must be a SessionHeader"),
    "empty stream": ([], Code.INVALID_ARGUMENT, "empty stream"),
    "wrong sample rate": ([header("s", "p1", sample_rate=44100)], Code.INVALID_ARGUMENT, "sample_rate must be 16000"),
    "no encoding": ([header("s", "p1", encoding=pb.AUDIO_ENCODING_UNSPECIFIED)], Code.INVALID_ARGUMENT,
                    "encoding must be"),
    "malformed session id": ([header("bad id!", "p1")], Code.INVALID_ARGUMENT, "session_id 'bad id!' is invalid"),
    "empty participant": ([header("s", "")], Code.INVALID_ARGUMENT, "participant_id '' is invalid"),
    "long id": ([header("s" * 65, "p1")], Code.INVALID_ARGUMENT, "is invalid"),
    "non-ascii id": ([header("sé", "p1")], Code.INVALID_ARGUMENT, "is invalid"),
    "other model": ([header("s", "p1", model_version="m0000")], Code.FAILED_PRECONDITION, "this server does not hold model m0000; it holds"),
    "odd byte count": ([header("s", "p1"), chunk(0, GOOD[:-1])], Code.INVALID_ARGUMENT, "even byte count"),
    "empty chunk": ([header("s", "p1"), chunk(0, b"")], Code.INVALID_ARGUMENT, "has no audio"),
    "too short": ([header("s", "p1"), chunk(0, GOOD[: 16000])], Code.INVALID_ARGUMENT, "the minimum is"),
    "too long": ([header("s", "p1"), chunk(0, GOOD + GOOD)], Code.INVALID_ARGUMENT, "the maximum is"),
    "oversized message": ([header("s", "p1"), chunk(0, b"\0\0" * 600_000)], Code.RESOURCE_EXHAUSTED, ""),
    "huge seq jump": ([header("s", "p1"), chunk(10**9, GOOD)], Code.OUT_OF_RANGE, "too far ahead"),
    "gap buffer full": ([header("s", "p1")] + [chunk(s, GOOD) for s in range(1, 5)], Code.RESOURCE_EXHAUSTED,
                        "send the missing chunk first"),
    "second header": ([header("s", "p1"), header("s", "p1")], Code.INVALID_ARGUMENT, "only the first message"),
    "end with a gap": ([header("s", "p1"), chunk(1, GOOD), end(1)], Code.FAILED_PRECONDITION, "were never sent"),
    # header fields
    "zero sample rate": ([header("s", "p1", sample_rate=0)], Code.INVALID_ARGUMENT, "sample_rate must be 16000"),
    "unknown encoding": ([header("s", "p1", encoding=7)], Code.INVALID_ARGUMENT, "encoding must be"),
    "empty session id": ([header("", "p1")], Code.INVALID_ARGUMENT, "session_id '' is invalid"),
    "long participant id": ([header("s", "p" * 65)], Code.INVALID_ARGUMENT, "participant_id"),
    "participant id with a key separator": ([header("s", "p1}:x")], Code.INVALID_ARGUMENT, "participant_id"),
    "session id with a glob": ([header("s*", "p1")], Code.INVALID_ARGUMENT, "session_id 's*' is invalid"),
    "participant id with a NUL": ([header("s", "p1\0")], Code.INVALID_ARGUMENT, "participant_id"),
    "long device id": ([header("s", "p1", device_id="d" * 65)], Code.INVALID_ARGUMENT, "device_id"),
    "device id with spaces": ([header("s", "p1", device_id="kiosk 3")], Code.INVALID_ARGUMENT, "device_id"),
    "resume position -1 as uint64": ([header("s", "p1", resume_from_seq=2**64 - 1)], Code.OUT_OF_RANGE,
                                     "resume_from_seq"),
    "resume position past 2**53": ([header("s", "p1", resume_from_seq=2**53)], Code.OUT_OF_RANGE, "resume_from_seq"),
    # message order
    "end before header": ([end(0)], Code.INVALID_ARGUMENT, "first message must be a SessionHeader"),
    "empty message first": ([pb.StreamRequest()], Code.INVALID_ARGUMENT, "first message must be a SessionHeader"),
    "empty message later": ([header("s", "p1"), pb.StreamRequest()], Code.INVALID_ARGUMENT, "empty StreamRequest"),
    "end before any chunk": ([header("s", "p1"), end(0), chunk(0, GOOD)], Code.FAILED_PRECONDITION,
                             "were never sent"),
    # positions
    "seq -1 as uint64": ([header("s", "p1"), chunk(2**64 - 1, GOOD)], Code.OUT_OF_RANGE, "too far ahead"),
    "end far ahead": ([header("s", "p1"), end(10**12)], Code.OUT_OF_RANGE, "too far ahead"),
    "end -1 as uint64": ([header("s", "p1"), end(2**64 - 1)], Code.OUT_OF_RANGE, "too far ahead"),
    "NaN start time": ([header("s", "p1"), timed_chunk(0, float("nan"))], Code.INVALID_ARGUMENT, "invalid start time"),
    "infinite start time": ([header("s", "p1"), timed_chunk(0, float("inf"))], Code.INVALID_ARGUMENT,
                            "invalid start time"),
    "negative start time": ([header("s", "p1"), timed_chunk(0, -7.0)], Code.INVALID_ARGUMENT, "invalid start time"),
}

# Refused at the header: not even the session is claimed, so Redis holds no key at all.
REFUSED_AT_HEADER = {
    "no header", "empty stream", "wrong sample rate", "no encoding", "malformed session id", "empty participant",
    "long id", "non-ascii id", "other model", "zero sample rate", "unknown encoding",
    "empty session id", "long participant id", "participant id with a key separator", "session id with a glob",
    "participant id with a NUL", "long device id", "device id with spaces", "resume position -1 as uint64",
    "resume position past 2**53", "end before header", "empty message first",
}


@pytest.mark.parametrize("case", sorted(STREAM_CASES))
def test_bad_stream_input_gets_its_status_and_stores_no_segment(case, server, tokens, redis_url):
    requests, code, fragment = STREAM_CASES[case]
    with stub_for(server.port) as stub:
        expect(stub, requests, tokens.metadata("agent"), code, fragment)
    keys = redis_keys(redis_url)
    assert not [key for key in keys if key.endswith((":vectors", ":updates", ":audio"))], keys
    if case in REFUSED_AT_HEADER:
        assert keys == [], keys


@pytest.mark.parametrize("token,code,fragment", [
    (None, Code.UNAUTHENTICATED, "missing 'authorization"),
    ("Bearer not-a-token", Code.UNAUTHENTICATED, "unknown or revoked token"),
    ("Basic abc", Code.UNAUTHENTICATED, "must be 'Bearer <token>'"),
])
def test_unauthenticated_calls_are_refused(server, token, code, fragment, redis_url):
    metadata = [("authorization", token)] if token else []
    with stub_for(server.port) as stub:
        expect(stub, [header("s", "p1"), chunk(0, GOOD)], metadata, code, fragment)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetScore(pb.GetScoreRequest(session_id="s"), metadata=metadata, timeout=10)
        assert info.value.code() == code
    assert redis_keys(redis_url) == []


def test_a_token_cannot_stream_or_read_another_participant(server, tokens, redis_url):
    with stub_for(server.port) as stub:
        expect(stub, [header("s", "p2"), chunk(0, GOOD)], tokens.metadata("agent-p1"), Code.PERMISSION_DENIED,
               "may not stream session 's' for participant 'p2'")
        assert redis_keys(redis_url) == []
        stream(stub, [header("s2", "p2"), chunk(0, GOOD), end(0)], tokens.metadata("agent"))
        reader = tokens.metadata("reader-p1")
        for call in (lambda: stub.GetScore(pb.GetScoreRequest(session_id="s2"), metadata=reader, timeout=10),
                     lambda: next(stub.Subscribe(pb.SubscribeRequest(session_id="s2"), metadata=reader, timeout=10)),
                     lambda: next(stub.Subscribe(pb.SubscribeRequest(participant_id="p2"), metadata=reader,
                                                 timeout=10))):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == Code.PERMISSION_DENIED
        # an unknown session looks the same as a forbidden one to a scoped reader
        with pytest.raises(grpc.RpcError) as info:
            stub.GetScore(pb.GetScoreRequest(session_id="nope"), metadata=reader, timeout=10)
        assert info.value.code() == Code.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as info:
            stub.GetScore(pb.GetScoreRequest(session_id="nope"), metadata=tokens.metadata("admin"), timeout=10)
        assert info.value.code() == Code.NOT_FOUND


def test_a_session_id_cannot_be_taken_over_by_another_participant(server, tokens):
    with stub_for(server.port) as stub:
        stream(stub, [header("shared", "p1"), chunk(0, GOOD), end(0)], tokens.metadata("agent"))
        expect(stub, [header("shared", "p2"), chunk(0, GOOD)], tokens.metadata("agent"), Code.PERMISSION_DENIED,
               "may not stream session 'shared' for participant 'p2'")


def test_new_speech_for_an_ended_session_is_refused(server, tokens):
    with stub_for(server.port) as stub:
        stream(stub, [header("over", "p1"), chunk(0, GOOD), end(0)], tokens.metadata("agent"))
        expect(stub, [header("over", "p1"), chunk(1, GOOD)], tokens.metadata("agent"), Code.FAILED_PRECONDITION,
               "has ended")


def test_bad_subscribe_requests(server, tokens):
    admin = tokens.metadata("admin")
    with stub_for(server.port) as stub:
        for request, code in [
            (pb.SubscribeRequest(), Code.INVALID_ARGUMENT),
            (pb.SubscribeRequest(participant_id="p1", after_offset="yesterday"), Code.INVALID_ARGUMENT),
            (pb.SubscribeRequest(session_id="no such"), Code.INVALID_ARGUMENT),
            (pb.SubscribeRequest(session_id="unknown"), Code.NOT_FOUND),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                next(stub.Subscribe(request, metadata=admin, timeout=10))
            assert info.value.code() == code, request


# -- hand-built wire bytes: what the generated stubs would never send ---------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):  # varint field
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _raw_header(session: bytes = b"s", participant: bytes = b"p1", extra: bytes = b"") -> bytes:
    header_bytes = (_field(1, session) + _field(2, participant) + _field(4, 16000) + _field(5, 1) + extra)
    return _field(1, header_bytes)  # StreamRequest.header


RAW_STREAM_CASES = {
    "bad UTF-8 in session id": [_raw_header(session=b"s\xff\xfe")],
    "bad UTF-8 in participant id": [_raw_header(participant=b"p\xc3\x28")],
    "overlong UTF-8 encoding of '/'": [_raw_header(session=b"s\xc0\xaf")],
    "UTF-16 surrogate encoded as UTF-8": [_raw_header(participant=b"p\xed\xa0\x80")],
    "bad UTF-8 after a good header": [_raw_header(), _raw_header(session=b"\xff")],
    "resume position varint over 64 bits": [_raw_header(extra=_varint(7 << 3) + b"\xff" * 10 + b"\x01")],
    "truncated message": [_raw_header()[:-3]],
    "not protobuf at all": [b"\xff\xff\xff\xff"],
}


@pytest.mark.parametrize("case", sorted(RAW_STREAM_CASES))
def test_undecodable_stream_messages_are_invalid_argument(case, server, tokens, redis_url):
    """grpc hands undecodable bytes to the deserialiser; the server must answer INVALID_ARGUMENT, not UNKNOWN."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        call = channel.stream_stream("/moodstream.v1.Screening/Stream")  # no serializer: raw bytes
        with pytest.raises(grpc.RpcError) as info:
            list(call(iter(RAW_STREAM_CASES[case]), metadata=tokens.metadata("agent"), timeout=30))
    finally:
        channel.close()
    assert info.value.code() == Code.INVALID_ARGUMENT, info.value.details()
    assert "not valid protobuf" in info.value.details()
    keys = redis_keys(redis_url)
    assert not [key for key in keys if key.endswith((":vectors", ":updates", ":audio"))], keys
    if case != "bad UTF-8 after a good header":
        assert keys == [], keys


def test_undecodable_read_requests_are_invalid_argument(server, tokens):
    admin = tokens.metadata("admin")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        get_score = channel.unary_unary("/moodstream.v1.Screening/GetScore")
        subscribe = channel.unary_stream("/moodstream.v1.Screening/Subscribe")
        for call in (lambda: get_score(_field(1, b"s\xff"), metadata=admin, timeout=10),
                     lambda: list(subscribe(_field(2, b"p\xc3\x28"), metadata=admin, timeout=10)),
                     lambda: list(subscribe(_field(1, b"s") + _field(3, b"\xff0-0"), metadata=admin, timeout=10))):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == Code.INVALID_ARGUMENT, info.value.details()
            assert "not valid protobuf" in info.value.details()
        # a well-formed message through the same raw path still works (the check is on parsing, not on the path)
        with pytest.raises(grpc.RpcError) as info:
            get_score(_field(1, b"unknown-session"), metadata=admin, timeout=10)
        assert info.value.code() == Code.NOT_FOUND
    finally:
        channel.close()


def test_the_other_services_are_not_affected_by_the_request_check(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()


@pytest.mark.parametrize("request_kwargs,code", [
    (dict(session_id="s" * 65), Code.INVALID_ARGUMENT),
    (dict(session_id=""), Code.INVALID_ARGUMENT),
    (dict(session_id="s:1"), Code.INVALID_ARGUMENT),
])
def test_bad_get_score_requests(server, tokens, request_kwargs, code):
    with stub_for(server.port) as stub:
        with pytest.raises(grpc.RpcError) as info:
            stub.GetScore(pb.GetScoreRequest(**request_kwargs), metadata=tokens.metadata("admin"), timeout=10)
        assert info.value.code() == code, info.value.details()


@pytest.mark.parametrize("request_kwargs", [
    dict(participant_id="p" * 65),
    dict(participant_id=""),
    dict(participant_id="p1*"),
    dict(participant_id="p1", after_offset="-1"),
    dict(participant_id="p1", after_offset="-1--1"),
    dict(participant_id="p1", after_offset="18446744073709551616-0"),  # 2**64: past a stream id's range
    dict(participant_id="p1", after_offset="0-18446744073709551616"),
    dict(participant_id="p1", after_offset="1" * 21 + "-0"),
    dict(participant_id="p1", after_offset="0-0-0"),
])
def test_bad_subscribe_targets_and_resume_offsets(server, tokens, request_kwargs):
    with stub_for(server.port) as stub:
        with pytest.raises(grpc.RpcError) as info:
            next(stub.Subscribe(pb.SubscribeRequest(**request_kwargs), metadata=tokens.metadata("admin"), timeout=10))
        assert info.value.code() == Code.INVALID_ARGUMENT, info.value.details()
