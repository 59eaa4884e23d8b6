"""Scale-out: the pipeline on a 3-master Redis Cluster, one session spread over two replicas
round-robin, and a bounded soak of many short sessions (bench/soak.py runs the long one)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moodstream.model import ScreeningModel
from moodstream.v1 import moodstream_pb2 as pb
from process_harness import offline_vectors, stored_session, windowed_stream
from server_harness import make_chunks, offline_score, running_server, stub_for
from test_faults import agent_chunks, assert_matches_offline
from test_pipeline_e2e import interview_file

TOLERANCE = 1e-5
MODEL_SEED = 11  # the conftest's `model` fixture, which its `checkpoint` fixture saves for server processes
ROOT = Path(__file__).resolve().parents[1]


def test_the_agent_streams_a_session_through_a_redis_cluster(model, redis_cluster_url, tokens, tmp_path):
    """Server on a 3-master cluster, the real agent process, a subscriber: unchanged, and exact."""
    path = interview_file(tmp_path / "interview.wav", seed=61, answers=5)
    chunks = agent_chunks(path)
    with running_server(model, redis_cluster_url, tokens, redis_cluster=True) as server:
        agent = subprocess.run(
            [sys.executable, "-P", "-m", "moodstream.compose.cli", "agent", "--server", f"127.0.0.1:{server.port}",
             "--token", tokens.by_name["agent"], "--participant", "p7", "--session", "on-cluster",
             "--outbox", str(tmp_path / "outbox"), "--json", str(path)], capture_output=True, text=True,
            timeout=120)
        assert agent.returncode == 0, agent.stderr
        with stub_for(server.port) as stub:
            call = stub.Subscribe(pb.SubscribeRequest(session_id="on-cluster"), metadata=tokens.metadata("admin"),
                                  timeout=30)
            updates = [update for _, update in zip(range(len(chunks)), call)]
            call.cancel()
    stored = stored_session(redis_cluster_url, "p7", "on-cluster", model.model_version, cluster=True)
    assert_matches_offline(model, chunks, stored)
    assert [u.seq for u in updates] == list(range(len(chunks)))
    assert abs(updates[-1].probability - offline_score(model, chunks)) <= TOLERANCE


def test_a_session_alternating_between_two_replicas_scores_as_on_one_server(checkpoint, model, redis_url, tokens):
    """Round-robin: each reconnect lands on the other replica (chunks 0-1 on A, 2-3 on B, 4-5 on A,
    6 + End on B). Neither replica keeps anything between connections; each picks the session up from
    Redis. The score equals the same chunks streamed on one connection to one server."""
    chunks = make_chunks(7, seed=62, seconds=4.0)
    metadata = tokens.metadata("agent")
    plan = [("a", [0, 1]), ("b", [2, 3]), ("a", [4, 5]), ("b", [6])]
    replica_model = ScreeningModel.from_pretrained(checkpoint)  # a replica loads its own copy
    with running_server(model, redis_url, tokens) as a, running_server(replica_model, redis_url, tokens) as b, \
            stub_for(a.port) as stub_a, stub_for(b.port) as stub_b:
        stubs = {"a": stub_a, "b": stub_b}
        connections = []
        for index, (replica, seqs) in enumerate(plan):
            last = index == len(plan) - 1
            # an agent resends from the lowest unacknowledged seq: here, what the last connection acked
            connections.append(windowed_stream(stubs[replica], "round-robin", "p8", {s: chunks[s] for s in seqs},
                                               metadata, last_seq=6 if last else None))
        single = windowed_stream(stub_a, "one-server", "p8", dict(enumerate(chunks)), metadata, last_seq=6)
    for connection, (_, seqs) in zip(connections, plan):
        assert connection.error is None, connection.error
        assert connection.acks == [(seq, False) for seq in seqs]
        assert [s.segments for s in connection.scores] == [seq + 1 for seq in seqs]
    spread = stored_session(redis_url, "p8", "round-robin", model.model_version)
    one = stored_session(redis_url, "p8", "one-server", model.model_version)
    assert_matches_offline(model, chunks, spread)
    assert abs(spread.probability - one.probability) <= TOLERANCE
    assert abs(connections[-1].scores[-1].probability - single.scores[-1].probability) <= TOLERANCE
    for seq in range(len(chunks)):
        assert np.abs(spread.vectors[seq] - one.vectors[seq]).max() <= TOLERANCE


def load_soak():
    spec = importlib.util.spec_from_file_location("moodstream_bench_soak", ROOT / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_a_bounded_soak_leaks_no_memory_streams_or_redis_keys(checkpoint, model, tmp_path):
    """200 sessions of 2-3 chunks (a third of them also subscribed to), 4 at a time, against a server
    process with a 3 s session TTL: every session completes with the offline score, the server's RSS
    after the last session is within 60 MB of its RSS after the first 60, no call is left open, and
    once the TTL has passed Redis holds as many keys as before."""
    soak = load_soak()
    report = soak.soak(checkpoint=checkpoint, workdir=tmp_path, sessions=200, warmup_sessions=60, concurrency=4,
                       ttl_seconds=3, rss_growth_mb=60.0)
    summary = {k: v for k, v in report.items() if k not in ("outcomes", "pool")}
    assert report["checks"] == {"every_session_completed": True, "rss_flat": True, "no_open_streams": True,
                                "redis_keys_back_to_baseline": True}, summary
    assert report["sessions"] == 200 and report["redis_keys_at_end"] > report["redis_keys_before"], summary
    vectors = offline_vectors(model, report["pool"])
    for outcome in report["outcomes"]:
        expected = model.score(vectors[list(outcome.chunk_indices)])
        assert abs(outcome.probability - expected) <= TOLERANCE, outcome
    print(summary)
