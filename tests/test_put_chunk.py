"""PutChunk: Stream's semantics one chunk per call, checked from a client built from the .proto alone."""
import grpc
import pytest

from moodstream.server.service import ServiceSettings
from raw_client import RawClient, client_for
from server_harness import make_chunks, offline_score, redis_keys

Code = grpc.StatusCode
GOOD = make_chunks(1, seed=11)[0]


MODEL_SEED = 8  # the conftest's `model` fixture: the tiny model of this seed
SERVER_OPTIONS = {"settings": ServiceSettings(max_seq_ahead=16, redis_retry_seconds=2)}  # the conftest's `server`


def session_header(raw: RawClient, session: str, participant: str = "p1", **fields):
    return raw.header(session, participant, **fields).header


def put_chunk(raw: RawClient, session: str, seq: int, pcm: bytes = GOOD, participant: str = "p1", **header):
    chunk = raw.message("Chunk")(seq=seq, start_seconds=7.0 * seq, pcm=pcm)
    request = raw.request("PutChunk", header=session_header(raw, session, participant, **header), chunk=chunk)
    return raw.unary("PutChunk", request)


def put_end(raw: RawClient, session: str, last_seq: int, participant: str = "p1"):
    request = raw.request("PutChunk", header=session_header(raw, session, participant),
                          end=raw.message("End")(last_seq=last_seq))
    return raw.unary("PutChunk", request)


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def segment_keys(redis_url: str, session: str) -> list[str]:
    """The keys that exist only once a segment of the session was applied."""
    return [key for key in redis_keys(redis_url) if key.endswith((f":s:{session}:vectors", f":s:{session}:updates"))]


def test_a_session_put_chunk_by_chunk_scores_as_the_offline_batch_and_as_stream(model, server, channel, pool,
                                                                                tokens):
    raw = client_for(channel, pool, tokens, "agent")
    chunks = make_chunks(4, seed=21)
    replies = [put_chunk(raw, "unary", seq, pcm) for seq, pcm in enumerate(chunks)]
    assert [(r.ack.seq, r.ack.duplicate) for r in replies] == [(0, False), (1, False), (2, False), (3, False)]
    assert [r.score.segments for r in replies] == [1, 2, 3, 4]
    assert [r.score.seq for r in replies] == [0, 1, 2, 3]
    assert abs(replies[-1].score.probability - offline_score(model, chunks)) <= 1e-5
    assert len(segment_keys(server.redis_url, "unary")) == 2
    assert "not a diagnosis" in replies[-1].score.notice

    streamed = list(raw.bidi("Stream", [raw.header("streamed", "p1")]
                             + [raw.chunk(seq, pcm) for seq, pcm in enumerate(chunks)] + [raw.end(3)]))
    last_streamed = [r.score for r in streamed if r.WhichOneof("message") == "score"][-1]
    assert abs(replies[-1].score.probability - last_streamed.probability) <= 1e-6

    ended = put_end(raw, "unary", 3)
    assert ended.ended and not ended.HasField("ack") and not ended.HasField("score")
    reader = client_for(channel, pool, tokens, "reader-p1")
    latest = reader.unary("GetScore", reader.request("GetScore", session_id="unary"))
    assert latest.segments == 4 and latest.probability == replies[-1].score.probability
    assert latest.session_state == pool.FindEnumTypeByName("moodstream.v1.SessionState").values_by_name[
        "SESSION_STATE_ENDED"].number
    # an End resent after a lost reply finishes nothing twice
    assert put_end(raw, "unary", 3).ended


def test_a_resent_chunk_gets_one_duplicate_ack_and_changes_nothing(server, channel, pool, tokens):
    raw = client_for(channel, pool, tokens, "agent")
    chunks = make_chunks(2, seed=22)
    first = [put_chunk(raw, "resent", seq, pcm) for seq, pcm in enumerate(chunks)]
    again = put_chunk(raw, "resent", 0, chunks[0])
    assert (again.ack.seq, again.ack.duplicate) == (0, True)
    assert not again.HasField("score")
    reader = client_for(channel, pool, tokens, "reader-p1")
    latest = reader.unary("GetScore", reader.request("GetScore", session_id="resent"))
    assert latest.segments == 2 and latest.probability == first[-1].score.probability


def test_a_chunk_before_its_predecessor_is_refused_naming_the_seq_to_send_and_stores_nothing(server, channel,
                                                                                             pool, tokens):
    raw = client_for(channel, pool, tokens, "agent")
    error = refusal(lambda: put_chunk(raw, "early", 1))
    assert error.code() == Code.FAILED_PRECONDITION
    assert "send seq 0 first" in error.details()
    assert not segment_keys(server.redis_url, "early")
    assert put_chunk(raw, "early", 0).ack.seq == 0
    assert put_chunk(raw, "early", 1).score.segments == 2


def test_between_calls_a_session_stays_open_and_a_stream_can_continue_it(server, channel, pool, tokens):
    raw = client_for(channel, pool, tokens, "agent")
    reader = client_for(channel, pool, tokens, "reader-p1")
    states = pool.FindEnumTypeByName("moodstream.v1.SessionState").values_by_name
    chunks = make_chunks(3, seed=23)
    put_chunk(raw, "mixed", 0, chunks[0])
    state = reader.unary("GetScore", reader.request("GetScore", session_id="mixed")).session_state
    assert state == states["SESSION_STATE_OPEN"].number
    streamed = list(raw.bidi("Stream", [raw.header("mixed", "p1"), raw.chunk(0, chunks[0]),
                                        raw.chunk(1, chunks[1])]))
    assert [(r.ack.seq, r.ack.duplicate) for r in streamed if r.WhichOneof("message") == "ack"] == [
        (0, True), (1, False)]
    assert put_chunk(raw, "mixed", 2, chunks[2]).score.segments == 3


def _bad_calls():
    """(id, request builder, token name, expected code, words in the message); Stream's answers for the same input."""
    short = GOOD[:16000]  # 0.5 s

    def chunk_request(raw, session, seq=0, pcm=GOOD, participant="p1", start=None, **header):
        chunk = raw.message("Chunk")(seq=seq, start_seconds=7.0 * seq if start is None else start, pcm=pcm)
        return raw.request("PutChunk", header=session_header(raw, session, participant, **header), chunk=chunk)

    return [
        ("no token", lambda raw: chunk_request(raw, "bad-a"), None, Code.UNAUTHENTICATED, ""),
        ("read-only token", lambda raw: chunk_request(raw, "bad-b"), "reader-p1", Code.PERMISSION_DENIED,
         "may not stream"),
        ("participant outside the scope", lambda raw: chunk_request(raw, "bad-c", participant="p2"), "agent-p1",
         Code.PERMISSION_DENIED, "may not stream"),
        ("neither chunk nor End", lambda raw: raw.request("PutChunk", header=session_header(raw, "bad-d")),
         "agent", Code.INVALID_ARGUMENT, "neither a chunk nor End"),
        ("no header", lambda raw: raw.request("PutChunk", chunk=raw.message("Chunk")(seq=0, pcm=GOOD)), "agent",
         Code.INVALID_ARGUMENT, "header"),
        ("wrong sample rate", lambda raw: chunk_request(raw, "bad-e", sample_rate=44100), "agent",
         Code.INVALID_ARGUMENT, "sample_rate"),
        ("malformed session id", lambda raw: chunk_request(raw, "bad f!"), "agent", Code.INVALID_ARGUMENT,
         "session_id"),
        ("other model", lambda raw: chunk_request(raw, "bad-g", model_version="other"), "agent",
         Code.FAILED_PRECONDITION, "does not hold model"),
        ("too short", lambda raw: chunk_request(raw, "bad-h", pcm=short), "agent", Code.INVALID_ARGUMENT,
         "minimum"),
        ("odd byte count", lambda raw: chunk_request(raw, "bad-i", pcm=GOOD[:-1]), "agent", Code.INVALID_ARGUMENT,
         "even byte count"),
        ("NaN start time", lambda raw: chunk_request(raw, "bad-j", start=float("nan")), "agent",
         Code.INVALID_ARGUMENT, "start time"),
        ("seq far ahead", lambda raw: chunk_request(raw, "bad-k", seq=10**9), "agent", Code.OUT_OF_RANGE,
         "too far ahead"),
        ("seq -1 as uint64", lambda raw: chunk_request(raw, "bad-l", seq=2**64 - 1), "agent", Code.OUT_OF_RANGE,
         "too far ahead"),
        ("End with a gap", lambda raw: raw.request("PutChunk", header=session_header(raw, "bad-m"),
                                                   end=raw.message("End")(last_seq=1)), "agent",
         Code.FAILED_PRECONDITION, "never sent"),
        ("End far ahead", lambda raw: raw.request("PutChunk", header=session_header(raw, "bad-n"),
                                                  end=raw.message("End")(last_seq=10**12)), "agent",
         Code.OUT_OF_RANGE, "too far ahead"),
    ]


@pytest.mark.parametrize("build, token, code, words", [case[1:] for case in _bad_calls()],
                         ids=[case[0] for case in _bad_calls()])
def test_bad_put_chunk_input_gets_streams_status_and_stores_no_segment(server, channel, pool, tokens, build, token,
                                                                       code, words):
    raw = client_for(channel, pool, tokens, token)
    request = build(raw)
    error = refusal(lambda: raw.unary("PutChunk", request))
    assert error.code() == code, error.details()
    assert words in error.details()
    assert not [key for key in redis_keys(server.redis_url) if ":s:bad" in key and key.endswith((":vectors", ":updates"))]


def test_an_ended_session_refuses_new_speech_and_an_end_behind_the_applied_seq(server, channel, pool, tokens):
    raw = client_for(channel, pool, tokens, "agent")
    chunks = make_chunks(2, seed=24)
    for seq, pcm in enumerate(chunks):
        put_chunk(raw, "closed", seq, pcm)
    error = refusal(lambda: put_end(raw, "closed", 0))
    assert error.code() == Code.FAILED_PRECONDITION and "already applied" in error.details()
    assert put_end(raw, "closed", 1).ended
    error = refusal(lambda: put_chunk(raw, "closed", 2))
    assert error.code() == Code.FAILED_PRECONDITION and "has ended" in error.details()
    assert put_chunk(raw, "closed", 1, chunks[1]).ack.duplicate  # a late resend is still answered


def test_undecodable_bytes_and_a_call_without_a_request_are_invalid_argument(server, channel, pool, tokens):
    raw = client_for(channel, pool, tokens, "agent")
    call = channel.unary_unary("/moodstream.v1.Screening/PutChunk", request_serializer=bytes,
                               response_deserializer=bytes)
    error = refusal(lambda: call(b"\x0a\x03\x0a\x01\xff", metadata=raw.metadata, timeout=10))
    assert error.code() == Code.INVALID_ARGUMENT and "not valid protobuf" in error.details()
    future = raw.zero_message_call("/moodstream.v1.Screening/PutChunk", timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        future.result()
    assert caught.value.code() == Code.INVALID_ARGUMENT


def test_an_end_is_not_acknowledged_when_its_session_expired_while_the_stream_was_open(server, channel, pool,
                                                                                       tokens):
    import queue
    import threading

    import redis

    raw = client_for(channel, pool, tokens, "agent")
    acked = threading.Event()
    ending = queue.Queue()

    def requests():
        yield raw.header("expires-open", "p1")
        yield raw.chunk(0, GOOD)
        acked.wait(30)
        yield ending.get(timeout=30)

    responses = raw.bidi("Stream", requests())
    first = next(responses)
    assert first.WhichOneof("message") == "ack" and first.ack.seq == 0
    acked.set()
    session_hash = next(key for key in redis_keys(server.redis_url) if key.endswith(":s:expires-open"))
    store = redis.Redis.from_url(server.redis_url)
    try:
        store.delete(session_hash)  # what its expiry does while the stream is open
        ending.put(raw.end(0))
        with pytest.raises(grpc.RpcError) as caught:
            list(responses)
        assert store.exists(session_hash) == 0  # nothing half-written in its place
    finally:
        store.close()
    assert caught.value.code() == Code.ABORTED, caught.value.details()
    assert "expired or was deleted" in caught.value.details()
