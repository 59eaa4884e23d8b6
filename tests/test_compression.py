"""Compression: gzip works, and what gRPC itself answers for bad compression before the service runs.

The bad cases are made from a real gRPC client's bytes by a relay that rewrites its HTTP/2 frames
(tests/http2_relay.py): an unknown grpc-encoding, a gzip payload whose checksum is wrong, and the
compressed flag on a message sent without any grpc-encoding. gRPC core rejects each while reading the
request, before any interceptor or handler sees it, and answers INTERNAL with its own message; the
service cannot change that code. The tests pin what a client gets and that nothing reaches Redis
(docs/bad-input.md).
"""
from pathlib import Path

import grpc
import pytest

from http2_relay import Http2Relay
from raw_client import acks, client_for
from server_harness import make_chunks, redis_keys

MODEL_SEED = 6  # the conftest's `model` fixture: the tiny model of this seed
GOOD = make_chunks(1, seed=6)[0]
Code = grpc.StatusCode
SESSION = "c" * 60


def unknown_encoding(block: bytes) -> bytes:
    return block.replace(b"\rgrpc-encoding\x04gzip", b"\rgrpc-encoding\x04snap")


def wrong_gzip_checksum(flag: int, body: bytes) -> tuple[int, bytes]:
    return flag, body[:-8] + bytes(byte ^ 0xFF for byte in body[-8:]) if flag else body


def flag_without_encoding(flag: int, body: bytes) -> tuple[int, bytes]:
    return 1, body


# case: (the client's compression, relay rewrites, gRPC core's message)
CASES = {
    "unknown grpc-encoding": (grpc.Compression.Gzip, {"rewrite_headers": unknown_encoding},
                              "Error parsing 'grpc-encoding' metadata"),
    "corrupt gzip": (grpc.Compression.Gzip, {"rewrite_message": wrong_gzip_checksum},
                     "Decompression failed due to zlib error"),
    "compressed flag without grpc-encoding": (grpc.Compression.NoCompression,
                                              {"rewrite_message": flag_without_encoding},
                                              "Compression bit set but no encoding configured"),
}


def calls(raw, session: str):
    """One call of each kind whose request gzip makes smaller, so gRPC does send it compressed."""
    return {
        "GetScore": lambda: raw.unary("GetScore", raw.request("GetScore", session_id=session), timeout=10),
        "ListSessions": lambda: raw.unary("ListSessions", raw.request("ListSessions", participant_id="p" * 60),
                                          timeout=10),
        "Stream": lambda: list(raw.bidi("Stream", [raw.header(session, "p1", device_id="d" * 60), raw.end(0)],
                                        timeout=10)),
    }


@pytest.fixture
def server(start_server):
    return start_server()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_compression_is_internal_from_grpc_itself_and_reaches_nothing(case, server, tokens, pool, redis_url):
    compression, rewrites, message = CASES[case]
    relay = Http2Relay(server.port, **rewrites)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{relay.port}", compression=compression) as channel:
            raw = client_for(channel, pool, tokens, "admin")
            for method, call in calls(raw, SESSION).items():
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert (info.value.code(), info.value.details()) == (Code.INTERNAL, message), method
    finally:
        relay.close()
    assert redis_keys(redis_url) == []  # not even the Stream's session was claimed
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:  # the server is unharmed
        raw = client_for(channel, pool, tokens, "admin")
        with pytest.raises(grpc.RpcError) as info:
            calls(raw, SESSION)["GetScore"]()
        assert info.value.code() == Code.NOT_FOUND


def test_gzip_compressed_calls_are_served_through_the_same_relay(server, tokens, pool):
    relay = Http2Relay(server.port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{relay.port}", compression=grpc.Compression.Gzip) as channel:
            raw = client_for(channel, pool, tokens, "admin")
            silence = bytes(len(GOOD))  # compresses well, so every message is sent gzipped
            responses = list(raw.bidi("Stream", [raw.header("gzipped", "p1"), raw.chunk(0, GOOD),
                                                 raw.chunk(1, silence), raw.end(1)], timeout=30))
            assert acks(responses) == [(0, False), (1, False)]
            assert raw.unary("GetScore", raw.request("GetScore", session_id="gzipped"), timeout=10).seq == 1
    finally:
        relay.close()


def test_bad_input_md_lists_each_internal_answer_of_grpc_with_its_message():
    text = (Path(__file__).resolve().parent.parent / "docs" / "bad-input.md").read_text()
    section = text[text.index("## Compression answered by gRPC itself"):]
    section = section[:section.index("\n## ", 1)]
    for case, (_, _, message) in CASES.items():
        row = next((line for line in section.splitlines() if f"`compression[{case}]`" in line), None)
        assert row is not None and "`INTERNAL`" in row and message in row, case
    # Everywhere else the page promises no INTERNAL: the rows above must be the only ones that say it.
    assert [line for line in text.splitlines() if line.startswith("|") and "`INTERNAL`" in line] == \
        [line for line in section.splitlines() if line.startswith("|") and "`INTERNAL`" in line]
