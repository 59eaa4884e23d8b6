"""Every bad input gets its gRPC status code and stores nothing."""
import grpc
import pytest

from moodstream.server.service import ServiceSettings
from moodstream.v1 import moodstream_pb2 as pb
from server_harness import (chunk, end, header, make_chunks, redis_keys, running_server, stream, stub_for,
                            tiny_model, write_tokens)

GOOD = make_chunks(1, seed=0)[0]
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return write_tokens(tmp_path_factory.mktemp("tokens"))


@pytest.fixture
def server(model, redis_url, tokens):
    settings = ServiceSettings(max_seq_ahead=16, max_pending_chunks=3, redis_retry_seconds=2)
    with running_server(model, redis_url, tokens, settings=settings) as running:
        yield running


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
    "other model": ([header("s", "p1", model_version="m0000")], Code.FAILED_PRECONDITION, "this server runs model"),
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
    "chunk after end": ([header("s", "p1"), chunk(0, GOOD), end(0), chunk(1, GOOD)], Code.INVALID_ARGUMENT,
                        "after End"),
}


@pytest.mark.parametrize("case", sorted(STREAM_CASES))
def test_bad_stream_input_gets_its_status_and_stores_no_segment(case, server, tokens, redis_url):
    requests, code, fragment = STREAM_CASES[case]
    with stub_for(server.port) as stub:
        expect(stub, requests, tokens.metadata("agent"), code, fragment)
    keys = redis_keys(redis_url)
    assert not [key for key in keys if key.endswith((":vectors", ":updates", ":audio"))], keys


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
               "may not stream for participant 'p2'")
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
               "belongs to another participant")


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
