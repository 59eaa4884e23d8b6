"""Session affinity: the session id as call metadata, checked by the server against the request's header, and
the real HAProxy (deploy/haproxy.cfg) and nginx (deploy/nginx.conf) hashing on it in front of two real
replicas on one real Redis."""
import importlib.util
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from moodstream.compose.redis_process import free_port
from moodstream.server.readiness import READINESS_SERVICE
from moodstream.wire import SESSION_ID_METADATA_KEY
from process_harness import ServerProcess
from raw_client import client_for
from server_harness import make_chunks
from test_pipeline_e2e import interview_file
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
GOOD = make_chunks(1, seed=12)[0]
_spec = importlib.util.spec_from_file_location("moodstream_bench_affinity", ROOT / "bench" / "affinity.py")
affinity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(affinity)

needs_haproxy = pytest.mark.skipif(affinity.proxy_binary("haproxy") is None,
                                   reason="haproxy is not installed (./run test installs Debian's haproxy as root)")
needs_nginx = pytest.mark.skipif(affinity.proxy_binary("nginx") is None,
                                 reason="nginx is not installed (./run test installs Debian's nginx as root)")
PROXIES = [pytest.param("haproxy", marks=needs_haproxy), pytest.param("nginx", marks=needs_nginx)]


def put_chunk(raw, session: str, seq: int, metadata):
    chunk = raw.message("Chunk")(seq=seq, start_seconds=7.0 * seq, pcm=GOOD)
    request = raw.request("PutChunk", header=raw.header(session, "p1").header, chunk=chunk)
    return raw.unary("PutChunk", request, metadata=raw.metadata + metadata)


def test_session_metadata_that_names_another_session_is_refused_and_the_same_one_is_served(server, channel, pool,
                                                                                           tokens):
    raw = client_for(channel, pool, tokens, "agent")
    assert put_chunk(raw, "affine", 0, [(SESSION_ID_METADATA_KEY, "affine")]).ack.seq == 0
    assert put_chunk(raw, "affine", 1, []).ack.seq == 1  # the metadata is optional
    with pytest.raises(grpc.RpcError) as caught:
        put_chunk(raw, "affine", 2, [(SESSION_ID_METADATA_KEY, "another")])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        f"the {SESSION_ID_METADATA_KEY} metadata 'another' is not the session_id of the request's SessionHeader "
        "'affine': send the same session id in both, or leave the metadata out")

    with pytest.raises(grpc.RpcError) as caught:
        list(raw.bidi("Stream", [raw.header("streamed", "p1"), raw.chunk(0, GOOD)],
                      metadata=raw.metadata + [(SESSION_ID_METADATA_KEY, "affine")]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata 'affine' is not the session_id of the request's SessionHeader 'streamed'" in caught.value.details()
    responses = list(raw.bidi("Stream", [raw.header("streamed", "p1"), raw.chunk(0, GOOD), raw.end(0)],
                              metadata=raw.metadata + [(SESSION_ID_METADATA_KEY, "streamed")]))
    assert [r.ack.seq for r in responses if r.WhichOneof("message") == "ack"] == [0]


@pytest.fixture(scope="module")
def replicas(checkpoint, redis_server, tokens, tmp_path_factory):
    """Two `moodstream server` processes on the run's Redis, each with its Prometheus port."""
    directory = tmp_path_factory.mktemp("replicas")
    servers = []
    try:
        for index in range(2):  # both start at once, then each is waited for
            port = free_port(exclude=[server.metrics_port for server in servers])
            servers.append(ServerProcess(checkpoint, redis_server.url, tokens.path, directory / f"server-{index}.log",
                                         "--metrics-port", str(port)).launch())
            servers[-1].metrics_port = port
        for server in servers:
            server.wait_listening()
        yield servers
    finally:
        for server in servers:
            server.close()


@pytest.mark.parametrize("proxy", PROXIES)
def test_put_chunk_sessions_through_the_proxy_hit_the_state_cache_with_the_hash_and_about_half_without(
        proxy, replicas, tokens, tmp_path):
    sessions, chunks = 16, 5
    results = {}
    for mode in affinity.MODES:
        names = [f"affinity-test-{proxy}-{mode.replace(' ', '-')}-{index}" for index in range(sessions)]
        results[mode] = affinity.measure(tmp_path, replicas, tokens.by_name["admin"], mode, names,
                                         make_chunks(chunks, seed=13), seed=1, proxy_name=proxy)
    hashed, round_robin = results["consistent hash"], results["round-robin"]
    assert hashed["hits"] + hashed["misses"] == sessions * (chunks - 1)  # a session's first chunk looks nothing up
    assert hashed["hit_ratio"] >= 0.95, hashed
    assert all(count > 0 for count in hashed["sessions_per_replica"].values()), hashed
    assert hashed["sessions_on_one_replica"] == sessions, hashed
    assert round_robin["hit_ratio"] < 0.75, round_robin  # the same calls without the hash: about one in two


@pytest.mark.parametrize("proxy_name", PROXIES)
def test_the_agents_stream_carries_its_session_id_through_the_proxy(proxy_name, replicas, tokens, tmp_path):
    proxy = affinity.PROXIES[proxy_name](tmp_path, [server.address for server in replicas])
    try:
        wait_for(proxy.all_up, f"{proxy_name} to be ready")
        # Long enough that the one Stream call's body (every chunk) passes nginx's default 1 MB body limit.
        wav = interview_file(tmp_path / "interview.wav", seed=63, answers=6)
        agent = subprocess.run(
            [sys.executable, "-P", "-m", "moodstream.compose.cli", "agent", "--server", proxy.address,
             "--token", tokens.by_name["agent"], "--participant", "p2", "--session", f"agent-via-{proxy_name}",
             "--outbox", str(tmp_path / "outbox"), "--json", str(wav)], capture_output=True, text=True, timeout=120)
        assert agent.returncode == 0, (agent.stderr, proxy.log()[-3000:])
        calls = wait_for(lambda: [c for c in proxy.calls() if c["path"].endswith("/Stream")], "the Stream call's log")
    finally:
        proxy.close()
    assert {call["session"] for call in calls} == {f"agent-via-{proxy_name}"}


@needs_haproxy
def test_haproxys_grpc_health_check_follows_each_replicas_readiness(tmp_path):
    """Two real gRPC health services (grpcio-health-checking, as the server runs it): HAProxy sends calls only to
    the one whose moodstream.v1.Screening status is SERVING, and follows each change."""
    services, servers, addresses = [], [], []
    for _ in range(2):
        service = health.HealthServicer()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(service, server)
        addresses.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        server.start()
        services.append(service)
        servers.append(server)
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    services[0].set(READINESS_SERVICE, serving)
    services[1].set(READINESS_SERVICE, not_serving)
    services[1].set("", serving)  # alive, not ready: what a replica without Redis says
    proxy = affinity.HAProxy(tmp_path, addresses)
    try:
        def states():
            return {name: state[0] for name, state in proxy.server_states().items()}

        wait_for(lambda: states() == {"server-1": "UP", "server-2": "DOWN"}, "server-2 to be taken out")
        services[0].set(READINESS_SERVICE, not_serving)
        services[1].set(READINESS_SERVICE, serving)
        wait_for(lambda: states() == {"server-1": "DOWN", "server-2": "UP"}, "the two to change places")
    finally:
        proxy.close()
        for server in servers:
            server.stop(None)
