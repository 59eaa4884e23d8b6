"""Property-based fuzzing (hypothesis) of everything that parses outside input.

* the server's Stream/GetScore/Subscribe handlers, against a real in-process
  server and Redis: random message sequences with random field values, and
  random bytes through a raw channel; every call ends OK or with a proper
  status (never UNKNOWN, INTERNAL or a hang), every response is a valid ack
  or score, and Redis never holds anything for a refused session nor any
  segment that was not sent in order;
* the server's PCM bytes -> float samples conversion and checks;
* the agent's file and stdin decoding on random and mutated audio files: a
  SourceError with a message, never another exception;
* ScorerState.from_bytes on random and mutated bytes (with and without a
  matching checksum): StateError, or a state that re-serialises to exactly
  the same bytes.

Runs are reproducible: the default profile "ci" derandomises hypothesis (the
same examples every run, no example database). MOODSTREAM_FUZZ=explore draws
new random examples, 10x as many, and keeps failures in .hypothesis/.
"""
import io
import math
import os
import re
import struct
import zlib
from datetime import timedelta

import grpc
import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from moodstream.agent import FileSource, PcmStreamSource, SourceError
from moodstream.model import ScorerState, StateError
from moodstream.server.rpc_errors import StreamAbort
from moodstream.server.session_stream import decode_pcm
from moodstream.server.store_keys import (VERSIONS_KEY, SessionKeys, directory_key, owner_key, participant_prefix,
                                          session_model_key)
from moodstream.v1 import moodstream_pb2 as pb
from server_harness import make_chunks, redis_keys, stub_for

# A generous per-example deadline: the machines running this are shared and small.
settings.register_profile("ci", derandomize=True, database=None, deadline=timedelta(seconds=5), print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", derandomize=False, deadline=timedelta(seconds=5), print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("MOODSTREAM_FUZZ", "ci")
settings.load_profile(PROFILE)
SCALE = 10 if PROFILE == "explore" else 1


def examples(count: int, shrink: bool = True) -> settings:
    if shrink:
        return settings(max_examples=count * SCALE)
    # Against a live server a failure can be a hung event loop: shrinking would wait out every call.
    return settings(max_examples=count * SCALE, phases=(Phase.explicit, Phase.reuse, Phase.generate))


# ----------------------------------------------------------------------------------------------------
# server: PCM bytes -> float samples
# ----------------------------------------------------------------------------------------------------

RATE = 16000


@examples(500)
@given(pcm=st.binary(max_size=6000), min_seconds=st.floats(0, 0.1), max_seconds=st.floats(0, 0.3),
       seq=st.integers(0, 2**64 - 1))
def test_pcm_decoding_gives_exact_samples_or_invalid_argument(pcm, min_seconds, max_seconds, seq):
    seconds = len(pcm) / 2 / RATE
    usable = bool(pcm) and len(pcm) % 2 == 0 and min_seconds <= seconds <= max_seconds
    try:
        samples = decode_pcm(seq, pcm, min_seconds, max_seconds)
    except StreamAbort as error:
        assert not usable
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert f"chunk {seq} " in str(error)
        return
    assert usable
    assert samples.dtype == np.float32 and samples.shape == (len(pcm) // 2,)
    assert np.all(samples >= -1.0) and np.all(samples < 1.0)
    assert np.array_equal(np.rint(samples * 32768).astype("<i2").tobytes(), pcm)


# ----------------------------------------------------------------------------------------------------
# scorer state bytes
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scorer_states():
    """Serialised states of a tiny model after 0, 1 and 3 segments."""
    import torch

    from moodstream.model import ModelConfig, ScreeningModel

    torch.manual_seed(0)
    model = ScreeningModel(ModelConfig.tiny())
    scorer = model.incremental_scorer(model.model_version)
    state, blobs = scorer.init_state(), []
    for step in range(4):
        if step in (0, 1, 3):
            blobs.append(state.to_bytes())
        state, _ = scorer.step(state, torch.randn(scorer.vector_size))
    return model.model_version, blobs, scorer


def with_checksum(payload: bytes) -> bytes:
    return payload + zlib.crc32(payload).to_bytes(4, "little")


def check_state_bytes(data: bytes, expected_version):
    try:
        state = ScorerState.from_bytes(data, expected_model_version=expected_version)
    except StateError as error:
        assert str(error)
        return None
    # Accepted: it must be exactly what the bytes say, nothing silently repaired or dropped.
    assert state.to_bytes() == data
    if expected_version is not None:
        assert state.model_version == expected_version
    assert state.segments == state.queries.shape[0] == state.keys.shape[0] == state.row_max.shape[0]
    return state


@examples(1000)
@given(data=st.binary(max_size=300), checksum=st.booleans(), expect=st.booleans())
def test_random_bytes_are_never_a_scorer_state(data, checksum, expect):
    check_state_bytes(with_checksum(data) if checksum else data, "m0123" if expect else None)


@st.composite
def mutations(draw, blob_count: int):
    index = draw(st.integers(0, blob_count - 1))
    kind = draw(st.sampled_from(["flip", "overwrite-header", "special-float", "truncate", "extend", "splice"]))
    if kind == "special-float":
        value = draw(st.sampled_from([math.nan, math.inf, -math.inf, 3.4e38, -3.4e38, 1e-45, 0.0]))
        return index, kind, draw(st.integers(0, 2**31)), struct.pack("<f", value)
    return index, kind, draw(st.integers(0, 2**31)), draw(st.binary(min_size=1, max_size=16))


@examples(1000)
@given(mutation=mutations(3), fix_checksum=st.booleans(), expect=st.booleans())
def test_mutated_scorer_states_are_refused_or_exactly_what_they_say(scorer_states, mutation, fix_checksum, expect):
    version, blobs, scorer = scorer_states
    index, kind, position, data = mutation
    payload = bytearray(blobs[index][:-4])
    header_end = 20 + len(version)  # magic, format, variant, version length, n, hidden, attention; version
    if kind == "flip":
        payload[position % len(payload)] ^= 1 << (position % 8)
    elif kind == "overwrite-header":
        start = position % header_end
        payload[start:start + len(data)] = data
    elif kind == "special-float":
        body = (len(payload) - header_end) // 4
        if body:
            start = header_end + 4 * (position % body)
            payload[start:start + 4] = data
    elif kind == "truncate":
        del payload[position % len(payload):]
    elif kind == "extend":
        payload += data
    else:
        start = position % len(payload)
        payload[start:start] = data
    blob = with_checksum(bytes(payload)) if fix_checksum else bytes(payload) + blobs[index][-4:]
    state = check_state_bytes(blob, version if expect else None)
    if state is not None and state.model_version == version:
        # What the server does next with a state it loaded: one more step. A score or a StateError.
        try:
            _, probability = scorer.step(state, np.full(scorer.vector_size, 0.5, np.float32))
        except StateError:
            return
        assert 0.0 <= probability <= 1.0


# ----------------------------------------------------------------------------------------------------
# agent: files and stdin
# ----------------------------------------------------------------------------------------------------

def read_source(source) -> int:
    total = 0
    for block in source:
        assert isinstance(block, np.ndarray) and block.dtype == np.int16 and block.ndim == 1
        total += len(block)
    return total


def decode_file(path) -> None:
    """Open and read a file like the agent does; only SourceError (with a message) may come out."""
    try:
        read_source(FileSource(path))
    except SourceError as error:
        message = str(error)
        assert message and "\n" not in message.strip() and "Traceback" not in message


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory):
    """Small valid files of the formats the agent reads (mono and stereo, native and other rates)."""
    folder = tmp_path_factory.mktemp("valid-audio")
    t = np.arange(int(0.3 * 22050)) / 22050
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    files = []
    for name, rate, fmt, subtype, channels in [
        ("a.wav", 16000, "WAV", "PCM_16", 1), ("b.wav", 22050, "WAV", "PCM_24", 2),
        ("c.flac", 16000, "FLAC", "PCM_16", 1), ("d.flac", 22050, "FLAC", "PCM_16", 2),
        ("e.ogg", 22050, "OGG", "VORBIS", 1), ("f.aiff", 16000, "AIFF", "PCM_16", 1),
        ("g.wav", 22050, "WAV", "FLOAT", 1),
    ]:
        data = tone[: int(0.3 * rate)]
        if channels == 2:
            data = np.stack([data, -data], axis=1)
        path = folder / name
        soundfile.write(path, data, rate, format=fmt, subtype=subtype)
        files.append((name, path.read_bytes()))
    return files


SUFFIXES = [".wav", ".flac", ".ogg", ".aiff", ".mp3", ".raw", ""]


@examples(150)
@given(data=st.binary(max_size=2048), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_as_an_audio_file_give_a_clear_error(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("fuzz") / f"input{suffix}"
    path.write_bytes(data)
    decode_file(path)


@examples(400)
@given(index=st.integers(0, 6), edits=st.lists(st.tuples(st.integers(0, 2**31), st.binary(min_size=1, max_size=8)),
                                               min_size=1, max_size=4),
       in_header=st.booleans(), truncate=st.one_of(st.none(), st.integers(0, 2**31)))
def test_mutated_audio_files_decode_or_give_a_clear_error(tmp_path_factory, sample_files, index, edits, in_header,
                                                          truncate):
    name, original = sample_files[index]
    data = bytearray(original)
    for position, replacement in edits:
        # Header fields (rate, channels, frame counts, chunk sizes) live in the first 64 bytes.
        start = position % (min(64, len(data)) if in_header else len(data))
        data[start:start + len(replacement)] = replacement
    if truncate is not None:
        del data[truncate % len(data):]
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(bytes(data))
    decode_file(path)


@examples(200)
@given(data=st.binary(max_size=3000), rate=st.sampled_from([16000, 8000, 44100, 48000, 1000, 384000]),
       block_seconds=st.sampled_from([0.001, 0.01, 0.1]), read_sizes=st.lists(st.integers(1, 97), max_size=20))
def test_random_bytes_on_stdin_decode_or_give_the_odd_length_error(data, rate, block_seconds, read_sizes):
    class Trickle(io.RawIOBase):
        """A pipe that hands out arbitrary read sizes."""

        def __init__(self):
            self.data, self.sizes = data, list(read_sizes)

        def readable(self):
            return True

        def read(self, size=-1):
            size = min(size, self.sizes.pop(0)) if self.sizes else size
            chunk, self.data = self.data[:size], self.data[size:]
            return chunk

    source = PcmStreamSource(Trickle(), input_rate=rate, block_seconds=block_seconds)
    try:
        total = read_source(source)
    except SourceError as error:
        assert len(data) % 2 == 1 and "odd number of bytes" in str(error)
        return
    assert len(data) % 2 == 0
    if rate == RATE:
        assert total == len(data) // 2


# ----------------------------------------------------------------------------------------------------
# server: Stream, GetScore and Subscribe against a real server and Redis
# ----------------------------------------------------------------------------------------------------


Code = grpc.StatusCode
ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEVICE = re.compile(r"[A-Za-z0-9_.-]{0,64}")
PERMITTED = ["p1", "p2", "p3"]          # in the "agent" token's stream scope (p1..p9)
REFUSALS = {Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.OUT_OF_RANGE, Code.RESOURCE_EXHAUSTED,
            Code.PERMISSION_DENIED}
ONE_SECOND = make_chunks(1, seed=11, seconds=1.0)[0]   # the shortest chunk the tiny model's config accepts
TOO_LONG = make_chunks(1, seed=12, seconds=10.5)[0]
REAL_MODEL = "<the server's model version>"             # replaced by the real one when a header is built


MODEL_SEED = 7  # the conftest's `model` fixture, which its `server` fixture runs for this module


def flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


ids = st.one_of(st.from_regex(ID, fullmatch=True), st.text(max_size=70),
                st.sampled_from(["", "a" * 65, "p1}:x", "s*", "s?", "sé", "s\x00", "s:1", "{s}"]))
# Positions: small ones, and the edges of uint64 and of the store's exact range (2**53).
positions = st.one_of(st.integers(0, 6), st.integers(0, 6),
                      st.sampled_from([2**64 - 1, 2**63, 2**53, 2**53 - 1, 10**12]), st.integers(0, 2**64 - 1))
valid_headers = st.fixed_dictionaries({
    "session_id": st.sampled_from(["s1", "session-2", "S.3_x"]),
    "participant_id": st.sampled_from(PERMITTED),
    "device_id": st.sampled_from(["", "kiosk-1"]),
    "sample_rate": st.just(16000),
    "encoding": st.just(pb.AUDIO_ENCODING_PCM_S16LE),
    "model_version": st.sampled_from(["", REAL_MODEL]),
    "resume_from_seq": st.integers(0, 10),
})
any_headers = st.fixed_dictionaries({
    "session_id": st.one_of(st.just("s1"), ids),
    "participant_id": st.one_of(st.sampled_from(PERMITTED + ["p10", "pX"]), ids),
    "device_id": st.one_of(st.just(""), st.from_regex(DEVICE, fullmatch=True), st.text(max_size=70)),
    "sample_rate": st.one_of(st.just(16000), st.integers(0, 2**32 - 1)),
    "encoding": st.sampled_from([0, 1, 1, 2, 7, 2**31 - 1]),
    "model_version": st.one_of(st.sampled_from(["", REAL_MODEL, "m0000"]), st.text(max_size=20)),
    "resume_from_seq": positions,
})
pcms = st.one_of(st.just(ONE_SECOND), st.just(ONE_SECOND), st.just(ONE_SECOND[:-1]), st.just(b""),
                 st.just(TOO_LONG), st.binary(max_size=64))
chunks = st.builds(lambda seq, start, pcm: ("chunk", seq, start, pcm), positions,
                   st.one_of(st.floats(0, 1e6), st.floats(allow_nan=True, allow_infinity=True)), pcms)
ends = st.builds(lambda last: ("end", last), positions)
messages = st.one_of(chunks, ends, any_headers.map(lambda h: ("header", h)), st.just(("empty",)))


@st.composite
def clean_sessions(draw):
    """A header and chunks 0..k-1 in order, maybe an End: what a correct agent sends."""
    count = draw(st.integers(0, 3))
    sequence = [("header", draw(valid_headers))]
    sequence += [("chunk", seq, 7.0 * seq, ONE_SECOND) for seq in range(count)]
    if count and draw(st.booleans()):
        sequence.append(("end", count - 1))
    return sequence


@st.composite
def any_sessions(draw):
    """Mostly an acceptable header (so the later messages are reached), then anything."""
    branch = draw(st.integers(0, 9))
    if branch < 6:
        first = ("header", draw(valid_headers))
    elif branch < 9:
        first = ("header", draw(any_headers))
    else:
        first = draw(messages)
    return [first] + draw(st.lists(messages, max_size=6))


def to_request(message, model_version: str) -> pb.StreamRequest:
    kind = message[0]
    if kind == "header":
        fields = dict(message[1])
        if fields["model_version"] == REAL_MODEL:
            fields["model_version"] = model_version
        return pb.StreamRequest(header=pb.SessionHeader(**fields))
    if kind == "chunk":
        return pb.StreamRequest(chunk=pb.Chunk(seq=message[1], start_seconds=message[2], pcm=message[3]))
    if kind == "end":
        return pb.StreamRequest(end=pb.End(last_seq=message[1]))
    return pb.StreamRequest()


def header_refusals(header: dict, model_version: str) -> set:
    """The status codes a header alone earns (empty: the header is acceptable)."""
    codes = set()
    if not ID.fullmatch(header["session_id"]) or not ID.fullmatch(header["participant_id"]) \
            or not DEVICE.fullmatch(header["device_id"]) or header["sample_rate"] != 16000 \
            or header["encoding"] != pb.AUDIO_ENCODING_PCM_S16LE:
        codes.add(Code.INVALID_ARGUMENT)
    if header["resume_from_seq"] > 2**53 - 1:
        codes.add(Code.OUT_OF_RANGE)
    if header["model_version"] not in ("", REAL_MODEL, model_version):
        codes.add(Code.FAILED_PRECONDITION)
    if header["participant_id"] not in {f"p{i}" for i in range(1, 10)}:
        codes.add(Code.PERMISSION_DENIED)
    return codes


def check_stream(server, sequence, clean: bool) -> None:
    flush(server.redis_url)
    model_version = server.model_version
    requests = [to_request(message, model_version) for message in sequence]
    error, responses = None, []
    with stub_for(server.port) as stub:
        call = stub.Stream(iter(requests), metadata=server.tokens.metadata("agent"), timeout=10)
        try:
            for response in call:
                responses.append(response)
        except grpc.RpcError as caught:
            error = caught
    code = error.code() if error is not None else Code.OK
    # Never a hang, never an unexpected exception on the server.
    assert code == Code.OK or code in REFUSALS, (code, error.details() if error else "")
    keys = redis_keys(server.redis_url)

    first = sequence[0]
    if first[0] != "header":
        assert code == Code.INVALID_ARGUMENT and keys == [], (code, keys)
        return
    header = first[1]
    refusals = header_refusals(header, model_version)
    if refusals:
        assert code in refusals and keys == [], (code, refusals, keys)
        return

    acked = set()
    for response in responses:
        kind = response.WhichOneof("message")
        assert kind in ("ack", "score"), response
        if kind == "ack":
            if not response.ack.duplicate:
                acked.add(response.ack.seq)
        else:
            score = response.score
            assert score.session_id == header["session_id"] and score.participant_id == header["participant_id"]
            assert 0.0 <= score.probability <= 1.0 and score.segments == score.seq + 1
            assert score.model_version == model_version and score.notice and score.offset
    import redis

    client = redis.Redis.from_url(server.redis_url)
    try:
        session = SessionKeys.build(header["participant_id"], header["session_id"], model_version)
        stored = sorted(int(seq) for seq in client.hkeys(session.vectors))
        updates = client.xlen(session.updates) if client.exists(session.updates) else 0
    finally:
        client.close()
    sent_valid = {m[1] for m in sequence[1:] if m[0] == "chunk" and m[3] == ONE_SECOND and math.isfinite(m[2])
                  and m[2] >= 0}
    assert stored == list(range(len(stored))), stored          # applied in order, no gaps
    assert set(stored) <= sent_valid and acked <= set(stored), (stored, sent_valid, acked)
    assert updates == len(stored)
    assert not [key for key in keys if key.endswith(":audio")]
    session_keys = (owner_key(header["session_id"]), session_model_key(header["session_id"]),
                    directory_key(model_version), VERSIONS_KEY)
    assert all(key.startswith(participant_prefix(header["participant_id"])) or key in session_keys for key in keys), keys
    if code == Code.OK:  # every chunk received got exactly one ack
        chunks_sent = sum(1 for m in sequence if m[0] == "chunk")
        assert sum(1 for r in responses if r.WhichOneof("message") == "ack") == chunks_sent
    if clean:
        chunk_count = sum(1 for m in sequence if m[0] == "chunk")
        assert code == Code.OK, error.details()
        assert acked == set(stored) == set(range(chunk_count))
        assert sum(1 for r in responses if r.WhichOneof("message") == "score") == chunk_count


@examples(60, shrink=False)
@given(sequence=clean_sessions())
def test_fuzz_stream_clean_sessions_are_scored_completely(server, sequence):
    check_stream(server, sequence, clean=True)


@examples(300, shrink=False)
@given(sequence=any_sessions())
def test_fuzz_stream_random_messages_get_a_proper_status_and_store_only_what_was_applied(server, sequence):
    check_stream(server, sequence, clean=False)


@examples(150, shrink=False)
@given(method=st.sampled_from(["GetScore", "Subscribe"]), session=st.one_of(st.none(), ids),
       participant=st.one_of(st.none(), ids), offset=st.one_of(st.sampled_from(["", "$", "0", "0-0", "1-1"]),
                                                                st.text(max_size=25)),
       token=st.sampled_from(["admin", "reader-p1", "agent"]))
def test_fuzz_read_requests_get_a_proper_status(server, method, session, participant, offset, token):
    """Against an empty store each request has exactly one right answer; compute it and compare."""
    from moodstream.server.store_values import parse_offset

    flush(server.redis_url)
    reads = {"admin": lambda p: True, "reader-p1": lambda p: p == "p1", "agent": lambda p: False}[token]
    try:
        parse_offset(offset)
        offset_ok = True
    except ValueError:
        offset_ok = False
    if method == "GetScore":
        session = session or ""
        expected = (Code.INVALID_ARGUMENT if not ID.fullmatch(session)
                    else Code.NOT_FOUND if token == "admin" else Code.PERMISSION_DENIED)
    elif session is None and participant is None:
        expected = Code.INVALID_ARGUMENT
    elif not offset_ok:
        expected = Code.INVALID_ARGUMENT
    elif session is not None:
        expected = (Code.INVALID_ARGUMENT if not ID.fullmatch(session)
                    else Code.NOT_FOUND if token == "admin" else Code.PERMISSION_DENIED)
    else:
        expected = (Code.INVALID_ARGUMENT if not ID.fullmatch(participant)
                    else Code.DEADLINE_EXCEEDED if reads(participant)  # allowed: waits for updates
                    else Code.PERMISSION_DENIED)
    metadata = server.tokens.metadata(token)
    timeout = 0.5 if expected == Code.DEADLINE_EXCEEDED else 10
    with stub_for(server.port) as stub:
        with pytest.raises(grpc.RpcError) as info:
            if method == "GetScore":
                stub.GetScore(pb.GetScoreRequest(session_id=session), metadata=metadata, timeout=timeout)
            else:
                target = {"session_id": session} if session is not None else (
                    {"participant_id": participant} if participant is not None else {})
                list(stub.Subscribe(pb.SubscribeRequest(after_offset=offset, **target), metadata=metadata,
                                    timeout=timeout))
    assert info.value.code() == expected, (info.value.code(), info.value.details())


@examples(200, shrink=False)
@given(method=st.sampled_from(["Stream", "GetScore", "Subscribe", "PutChunk"]),
       payloads=st.lists(st.binary(max_size=200), min_size=1, max_size=3))
def test_fuzz_raw_bytes_get_a_proper_status(server, method, payloads):
    flush(server.redis_url)
    metadata = server.tokens.metadata("admin")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    path = f"/moodstream.v1.Screening/{method}"
    try:
        if method == "Stream":
            list(channel.stream_stream(path)(iter(payloads), metadata=metadata, timeout=30))
        elif method in ("GetScore", "PutChunk"):
            channel.unary_unary(path)(payloads[0], metadata=metadata, timeout=10)
        else:
            list(channel.unary_stream(path)(payloads[0], metadata=metadata, timeout=0.3))
        code = Code.OK
    except grpc.RpcError as error:
        code = error.code()
    finally:
        channel.close()
    allowed = REFUSALS | {Code.OK, Code.NOT_FOUND} | ({Code.DEADLINE_EXCEEDED} if method == "Subscribe" else set())
    assert code in allowed, code
    assert not [key for key in redis_keys(server.redis_url) if key.endswith((":vectors", ":updates"))]


# ----------------------------------------------------------------------------------------------------
# regressions found by the fuzzers above, pinned as plain tests
# ----------------------------------------------------------------------------------------------------

def _forged(blob: bytes, position: int, replacement: bytes) -> bytes:
    """`blob` with bytes replaced at `position` and a valid checksum (a state only a writer to Redis could make)."""
    payload = bytearray(blob[:-4])
    payload[position:position + len(replacement)] = replacement
    return with_checksum(bytes(payload))


def test_a_state_of_other_widths_is_refused_before_a_step(scorer_states):
    version, blobs, scorer = scorer_states
    attention_at = 16  # header: magic(4) format(2) variant(1) version length(1) n(4) hidden(4) attention(4)
    for width in (17, 1):
        state = ScorerState.from_bytes(_forged(blobs[0], attention_at, struct.pack("<I", width)), version)
        with pytest.raises(StateError, match="do not fit this scorer"):
            scorer.check_state(state)
        with pytest.raises(StateError):
            scorer.step(state, np.zeros(scorer.vector_size, np.float32))


def test_absurd_widths_are_refused_without_allocating_them(scorer_states):
    version, blobs, _ = scorer_states
    for field_at in (12, 16):  # hidden, attention
        with pytest.raises(StateError, match="implausible widths"):
            ScorerState.from_bytes(_forged(blobs[0], field_at, struct.pack("<I", 2**32 - 1)), version)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_in_a_state_are_refused(scorer_states, value):
    version, blobs, _ = scorer_states
    body_at = 20 + len(version)
    with pytest.raises(StateError, match="NaN or infinite"):
        ScorerState.from_bytes(_forged(blobs[1], body_at, struct.pack("<f", value)), version)


def test_a_forged_state_in_redis_is_data_loss_not_an_unexpected_error(server):
    """Before the fix a NaN state passed from_bytes, the step produced a NaN score and the call ended UNKNOWN."""
    import redis

    flush(server.redis_url)
    metadata = server.tokens.metadata("agent")
    first = [pb.StreamRequest(header=pb.SessionHeader(session_id="forged", participant_id="p1", sample_rate=16000,
                                                      encoding=pb.AUDIO_ENCODING_PCM_S16LE)),
             pb.StreamRequest(chunk=pb.Chunk(seq=0, pcm=ONE_SECOND))]
    with stub_for(server.port) as stub:
        assert [r.WhichOneof("message") for r in stub.Stream(iter(first), metadata=metadata, timeout=30)] == \
            ["ack", "score"]
        key = SessionKeys.build("p1", "forged", server.model_version).session
        client = redis.Redis.from_url(server.redis_url)
        try:
            state = client.hget(key, "state")
            body_at = 24 + len(server.model_version)  # the head's h, after its 24-byte header
            client.hset(key, "state", _forged(state, body_at, struct.pack("<f", math.nan)))
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Stream(iter([first[0], pb.StreamRequest(chunk=pb.Chunk(seq=1, start_seconds=1.0,
                                                                                 pcm=ONE_SECOND))]),
                                 metadata=metadata, timeout=30))
            assert info.value.code() == Code.DATA_LOSS, info.value.details()
            assert client.hlen(key + ":vectors") == 1  # nothing applied on top of the bad state
        finally:
            client.close()


def test_a_headerless_raw_file_is_a_clear_error_not_a_traceback(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "speech.raw"
    path.write_bytes(ONE_SECOND)
    with pytest.raises(SourceError, match="no header giving its sample rate"):
        FileSource(path)
    shown = subprocess.run([sys.executable, "-P", "-m", "moodstream.compose.cli", "agent", str(path), "--server",
                            "127.0.0.1:9", "--participant", "p1", "--outbox", str(tmp_path / "box")],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 2, shown.stderr
    assert "Traceback" not in shown.stderr and "pipe raw PCM s16le into '-'" in shown.stderr
