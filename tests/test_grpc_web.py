"""gRPC-web on the scoring server's own HTTP port: an HTTP client with messages compiled from the .proto.

The frames are built with sonora's protocol helpers (the library the server
uses is checked against the gRPC-web wire format by sonora's own tests), and
sent by httpx over plain HTTP/1.1, as a browser's fetch would.
"""
import ssl
import struct
from urllib.parse import unquote

import grpc
import httpx
import pytest
from sonora import protocol

from raw_client import RawClient
from server_harness import make_chunks, offline_score, redis_keys

Code = grpc.StatusCode
SERVICE = "/moodstream.v1.Screening"
PAGE_ORIGIN = "https://record.example"


MODEL_SEED = 12  # the conftest's `model` fixture: the tiny model of this seed
SERVER_OPTIONS = {"grpc_web_port": 0, "grpc_web_origins": (PAGE_ORIGIN,)}  # the conftest's `server` fixture


@pytest.fixture
def web(server):
    with httpx.Client(base_url=f"http://127.0.0.1:{server.server.grpc_web_port}", timeout=30) as client:
        yield client


class WebCall:
    """One gRPC-web call's outcome: status, message and the decoded response (if any)."""

    def __init__(self, response: httpx.Response, response_type):
        assert response.status_code == 200, response.text
        self.headers = response.headers
        self.message = None
        trailers = {}
        body = response.content
        while body:
            flags, length = struct.unpack(">BI", body[:5])
            frame, body = body[5:5 + length], body[5 + length:]
            if flags & 0x80:
                trailers = dict(protocol.unpack_trailers(frame))
            else:
                self.message = response_type.FromString(frame)
        status = trailers.get("grpc-status", response.headers.get("grpc-status"))
        self.code = next(code for code in Code if code.value[0] == int(status))
        self.details = unquote(trailers.get("grpc-message", response.headers.get("grpc-message", "")))


def call(web: httpx.Client, raw: RawClient, method: str, request=None, body: bytes | None = None,
         token: str | None = None, **headers) -> WebCall:
    _, _, response_type = raw._types(method)
    if body is None:
        body = protocol.wrap_message(False, False, request.SerializeToString())
    sent = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "origin": PAGE_ORIGIN, **headers}
    if token:
        sent["authorization"] = f"Bearer {token}"
    return WebCall(web.post(f"{SERVICE}/{method}", content=body, headers=sent), response_type)


def put_chunk(raw: RawClient, session: str, seq: int, pcm: bytes, participant: str = "p1"):
    header = raw.header(session, participant).header
    return raw.request("PutChunk", header=header, chunk=raw.message("Chunk")(seq=seq, start_seconds=7.0 * seq,
                                                                             pcm=pcm))


def test_a_session_put_over_grpc_web_is_scored_by_the_same_server_and_read_over_grpc(model, server, web, pool,
                                                                                      tokens):
    raw = RawClient(None, pool)
    chunks = make_chunks(3, seed=31)
    agent = tokens.by_name["agent"]
    replies = [call(web, raw, "PutChunk", put_chunk(raw, "web", seq, pcm), token=agent)
               for seq, pcm in enumerate(chunks)]
    assert [r.code for r in replies] == [Code.OK] * 3
    assert [(r.message.ack.seq, r.message.ack.duplicate) for r in replies] == [(0, False), (1, False), (2, False)]
    assert abs(replies[-1].message.score.probability - offline_score(model, chunks)) <= 1e-5
    again = call(web, raw, "PutChunk", put_chunk(raw, "web", 1, chunks[1]), token=agent)
    assert again.message.ack.duplicate and not again.message.HasField("score")
    assert replies[0].headers["access-control-allow-origin"] == PAGE_ORIGIN

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        native = RawClient(channel, pool, tokens.by_name["reader-p1"])
        latest = native.unary("GetScore", native.request("GetScore", session_id="web"))
    assert latest.segments == 3 and latest.probability == replies[-1].message.score.probability
    read_over_web = call(web, raw, "GetScore", raw.request("GetScore", session_id="web"),
                         token=tokens.by_name["reader-p1"])
    assert read_over_web.message.probability == latest.probability
    # A browser page reads the model's speech settings, threshold and evidence rule the same way.
    info = call(web, raw, "GetModelInfo", raw.request("GetModelInfo"), token=agent)
    assert info.code == Code.OK, info.details
    assert info.message.model_version == model.model_version and info.message.sample_rate == 16000
    assert info.message.min_evidence_segments == model.config.min_evidence_segments


def test_refusals_carry_the_grpc_status_codes_of_the_grpc_port(server, web, pool, tokens):
    raw = RawClient(None, pool)
    good = make_chunks(1, seed=32)[0]
    agent = tokens.by_name["agent"]
    cases = {
        "no token": (call(web, raw, "PutChunk", put_chunk(raw, "w-a", 0, good)), Code.UNAUTHENTICATED, ""),
        "another participant": (call(web, raw, "PutChunk", put_chunk(raw, "w-b", 0, good, "p2"),
                                     token=tokens.by_name["agent-p1"]), Code.PERMISSION_DENIED, "may not stream"),
        "chunk before its predecessor": (call(web, raw, "PutChunk", put_chunk(raw, "w-c", 1, good), token=agent),
                                         Code.FAILED_PRECONDITION, "send seq 0 first"),
        "too short": (call(web, raw, "PutChunk", put_chunk(raw, "w-d", 0, good[:16000]), token=agent),
                      Code.INVALID_ARGUMENT, "minimum"),
        "not protobuf": (call(web, raw, "PutChunk", body=protocol.wrap_message(False, False, b"\x0a\x03\x0a\x01\xff"),
                              token=agent), Code.INVALID_ARGUMENT, "not valid protobuf"),
        "no message": (call(web, raw, "PutChunk", body=b"", token=agent), Code.INVALID_ARGUMENT,
                       "without a request message"),
        "a cut frame": (call(web, raw, "PutChunk", body=protocol.wrap_message(False, False, b"x" * 100)[:50],
                             token=agent), Code.INVALID_ARGUMENT, "declares 100 bytes"),
        "over the message limit": (call(web, raw, "PutChunk", body=b"\0" * (1024 * 1024 + 6), token=agent),
                                   Code.RESOURCE_EXHAUSTED, "message limit"),
        "unknown session": (call(web, raw, "GetScore", raw.request("GetScore", session_id="nowhere"),
                                 token=tokens.by_name["admin"]), Code.NOT_FOUND, "no session"),
    }
    for name, (outcome, code, words) in cases.items():
        assert (name, outcome.code) == (name, code), outcome.details
        assert words in outcome.details, (name, outcome.details)
    assert not [key for key in redis_keys(server.redis_url) if ":s:w-" in key and key.endswith(":vectors")]


def test_only_unary_methods_are_offered_to_browsers(server, web, pool, tokens):
    for method in ("Stream", "Subscribe"):
        response = web.post(f"{SERVICE}/{method}", content=b"\0\0\0\0\0",
                            headers={"content-type": "application/grpc-web+proto",
                                     "authorization": f"Bearer {tokens.by_name['admin']}"})
        assert response.status_code == 404


def test_cors_admits_the_configured_page_origin_only(server, web):
    preflight = {"access-control-request-method": "POST",
                 "access-control-request-headers": "authorization,content-type,x-grpc-web"}
    allowed = web.options(f"{SERVICE}/PutChunk", headers={"origin": PAGE_ORIGIN, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == PAGE_ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    refused = web.options(f"{SERVICE}/PutChunk", headers={"origin": "https://elsewhere.example", **preflight})
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


def test_grpc_web_is_served_with_the_same_tls_files(start_module_server, tokens, pool, tmp_path):
    from certs import CertificateAuthority

    authority = CertificateAuthority.create(tmp_path, "web-ca")
    issued = authority.issue(tmp_path, "server", server=True)
    raw = RawClient(None, pool)
    with start_module_server.running(grpc_web_port=0, tls_cert=issued.cert, tls_key=issued.key) as running:
        url = f"https://127.0.0.1:{running.server.grpc_web_port}"
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=authority.cert), timeout=30) as secure:
            outcome = call(secure, raw, "PutChunk", put_chunk(raw, "web-tls", 0, make_chunks(1, seed=33)[0]),
                           token=tokens.by_name["agent"])
        assert outcome.code == Code.OK and outcome.message.ack.seq == 0
        with httpx.Client(base_url=url.replace("https", "http"), timeout=10) as plain:
            with pytest.raises(httpx.HTTPError):
                plain.post(f"{SERVICE}/PutChunk", content=b"")


def test_a_grpc_web_port_in_use_is_refused_at_start(start_module_server):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"--grpc-web-port {port}"):
            with start_module_server.running(grpc_web_port=port):
                pass
