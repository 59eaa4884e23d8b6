"""PutChunk on long sessions: the server's scorer state cache off (the baseline) against on, in the same run.

    python bench/state_cache.py [--lengths 10 500 2000] [--calls 10] [--rounds 3] [--out FILE]

Two `moodstream server` processes on one Redis (append-only file,
appendfsync always, as deploy/ runs it), one with `--state-cache-mb 0` and
one with the default cache, serve the paper-size session head (LSTM 128,
self-attention 128) on a tiny encoder. For each session length n, one session
per server is filled with n segments through the server's own `SessionStore`
(the same random segment vectors for both), then each server gets one
`PutChunk` (the cached server restores the session once, as any server does
when a session first reaches it) and then --calls more per round, stop-and-wait,
the two servers taking turns each round. It reports per call: the median and
p95 time, the bytes Redis sent (its `total_net_output_bytes`, the INFO
call's own reply subtracted), and the servers' cache hits and misses from
their Prometheus metrics. Both sessions must score exactly alike.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import machine, markdown_table, percentile  # noqa: E402
from loopback import Server, pcm_chunks  # noqa: E402
from scorer import paper_session_head_config  # noqa: E402

DEFAULT_LENGTHS = (10, 500, 2000)
PARTICIPANT = "bench"


class CacheServer(Server):
    """`moodstream server` with a tokens file, a state cache of `cache_mb` and its Prometheus port."""

    def __init__(self, checkpoint: Path, redis_url: str, tokens: Path, cache_mb: float) -> None:
        import subprocess

        from moodstream.compose.redis_process import free_port

        self.port, self.metrics_port = free_port(), free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="moodstream-bench-server-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moodstream.compose.cli", "server", "--checkpoint", str(checkpoint), "--redis", redis_url,
             "--port", str(self.port), "--tokens", str(tokens), "--precision", "fp32", "--max-batch", "1",
             "--state-cache-mb", str(cache_mb), "--metrics-port", str(self.metrics_port), "--log-level", "warning"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def lookups(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        found = {"hit": 0.0, "miss": 0.0}
        for family in text_string_to_metric_families(text):
            if family.name == "moodstream_state_cache_lookups":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        found[sample.labels["outcome"]] = sample.value
        return found


def fill(redis_url: str, model, sessions: list[str], segments: int, seed: int) -> None:
    """`segments` applied segments in each session, as a server stores them, from the same random vectors."""
    from moodstream.server.redis_connection import connect
    from moodstream.server.store import SessionStore

    scorer, config = model.incremental_scorer(), model.config
    vectors = torch.randn(segments, model.config.segment_vector_size, generator=torch.Generator().manual_seed(seed))

    async def main() -> None:
        client = connect(redis_url)
        store = SessionStore(client, model_version=model.model_version)
        try:
            for session in sessions:
                await store.pin_model_version(session)
                await store.claim_session(session, PARTICIPANT, "bench")
                state = scorer.init_state()
                for seq, vector in enumerate(vectors):
                    new_state, probability = scorer.step(state, vector)
                    evidence = config.evidence_sufficient(seq + 1)
                    score = {"probability": probability, "speech_seconds": 7.0 * (seq + 1),
                             "threshold": config.decision_threshold, "evidence_sufficient": evidence,
                             "above_threshold": evidence and probability >= config.decision_threshold}
                    result = await store.apply_segment(
                        session, PARTICIPANT, seq, vector.numpy().astype("<f4").tobytes(), new_state.head_bytes(),
                        score, None if seq == 0 else seq - 1, state_rows=new_state.row_bytes(state.rows))
                    assert result.applied, result
                    state = new_state
        finally:
            await client.aclose()

    asyncio.run(main())


def run(lengths=DEFAULT_LENGTHS, calls: int = 10, rounds: int = 3, log=print) -> dict:
    import grpc
    import redis

    from moodstream.model import ScreeningModel
    from moodstream.compose.redis_process import RedisProcess
    from moodstream.server.auth import create_token
    from moodstream.v1 import moodstream_pb2 as pb
    from moodstream.v1 import moodstream_pb2_grpc as pb_grpc
    from moodstream.wire import bearer_metadata

    torch.manual_seed(0)
    chunks = pcm_chunks(1 + calls * rounds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, \
            RedisProcess(appendonly=True, appendfsync="always").start() as redis_server:
        checkpoint = ScreeningModel(paper_session_head_config()).eval().save_pretrained(Path(tmp) / "checkpoint")
        model = ScreeningModel.from_pretrained(checkpoint).eval()
        tokens_path = Path(tmp) / "tokens.json"
        metadata = bearer_metadata(create_token(tokens_path, "bench", ["*"], ["*"]))
        servers = {"off": CacheServer(checkpoint, redis_server.url, tokens_path, 0),
                   "on": CacheServer(checkpoint, redis_server.url, tokens_path, 256)}
        info = redis.Redis.from_url(redis_server.url)
        try:
            channels = {name: grpc.insecure_channel(f"127.0.0.1:{server.port}") for name, server in servers.items()}
            stubs = {name: pb_grpc.ScreeningStub(channel) for name, channel in channels.items()}

            def sent_bytes() -> int:
                return int(info.info("stats")["total_net_output_bytes"])

            info_reply = -(sent_bytes() - sent_bytes())  # what one INFO reply adds itself

            for n in lengths:
                log(f"{n} segments: filling two sessions ...")
                sessions = {name: f"cache-{name}-{n}" for name in servers}
                fill(redis_server.url, model, list(sessions.values()), n, seed=n)

                def put(name: str, seq: int) -> float:
                    header = pb.SessionHeader(session_id=sessions[name], participant_id=PARTICIPANT,
                                              device_id="bench", sample_rate=16000,
                                              encoding=pb.AUDIO_ENCODING_PCM_S16LE)
                    request = pb.PutChunkRequest(header=header,
                                                 chunk=pb.Chunk(seq=seq, start_seconds=7.0 * seq,
                                                                pcm=chunks[seq - n]))
                    reply = stubs[name].PutChunk(request, metadata=metadata, timeout=120)
                    assert reply.ack.seq == seq and not reply.ack.duplicate, reply
                    return reply.score.probability

                before = {name: server.lookups() for name, server in servers.items()}
                probabilities = {name: [put(name, n)] for name in servers}  # each server's first sight
                seconds = {name: [] for name in servers}
                sent = {name: 0 for name in servers}
                for round_index in range(rounds):
                    log(f"{n} segments: round {round_index + 1} of {rounds}")
                    for name in servers:
                        for call in range(calls):
                            seq = n + 1 + round_index * calls + call
                            start_bytes = sent_bytes()
                            started = time.perf_counter()
                            probabilities[name].append(put(name, seq))
                            seconds[name].append(time.perf_counter() - started)
                            sent[name] += sent_bytes() - start_bytes - info_reply
                after = {name: server.lookups() for name, server in servers.items()}
                assert probabilities["off"] == probabilities["on"], "the cache changed a score"
                row = {"segments": n, "calls": calls * rounds}
                for name in servers:
                    row[f"{name}_ms_p50"] = percentile(seconds[name], 50) * 1000
                    row[f"{name}_ms_p95"] = percentile(seconds[name], 95) * 1000
                    row[f"{name}_redis_bytes_per_call"] = sent[name] / len(seconds[name])
                    row[f"{name}_hits"] = after[name]["hit"] - before[name]["hit"]
                    row[f"{name}_misses"] = after[name]["miss"] - before[name]["miss"]
                row["p50_speedup"] = row["off_ms_p50"] / row["on_ms_p50"]
                rows.append(row)
            for channel in channels.values():
                channel.close()
        finally:
            info.close()
            for server in servers.values():
                server.close()
    return {"machine": machine(), "redis": "appendonly yes, appendfsync always", "rows": rows}


def report(result: dict) -> str:
    rows = [[r["segments"], f"{r['off_ms_p50']:.1f} / {r['off_ms_p95']:.1f} ms",
             f"{r['on_ms_p50']:.1f} / {r['on_ms_p95']:.1f} ms", f"{r['p50_speedup']:.2f}×",
             f"{r['off_redis_bytes_per_call']:,.0f}", f"{r['on_redis_bytes_per_call']:,.0f}",
             f"{r['on_hits']:.0f} / {r['on_misses']:.0f}"] for r in result["rows"]]
    return markdown_table(["segments so far", "PutChunk p50 / p95, cache off (baseline)",
                           "PutChunk p50 / p95, cache on", "p50 ratio off / on", "bytes Redis sent per call, off",
                           "bytes Redis sent per call, on", "cache hits / misses (on, first call included)"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS),
                        help="session lengths in segments (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=10, help="PutChunk calls per server per round (default: 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the servers taking turns (default: 3)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    result = run(args.lengths, args.calls, args.rounds, log=lambda message: print(message, file=sys.stderr))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(report(result))


if __name__ == "__main__":
    main()
