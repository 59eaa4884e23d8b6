"""Soak: many short sessions against one scoring server process, then check that nothing leaks.

    python bench/soak.py --minutes 30 [--concurrency 4] [--ttl-seconds 5] [--warmup-sessions 200] [--checkpoint DIR]

Starts a Redis process and a `moodstream server` process (a tiny untrained model unless
--checkpoint is given) on 127.0.0.1, then keeps `--concurrency` agents' worth of gRPC streams busy
with short sessions (2-3 chunks each, some followed by a Subscribe that reads the session's updates)
until the time is up. It prints one JSON report and exits 1 if a check fails:

* every session completed: each chunk acked once, not as a duplicate, and the last score counts
  every segment;
* the server's resident memory at the end is within `--rss-growth-mb` of what it was after the
  warm-up sessions (its VmRSS, sampled while it runs);
* no stream or Subscribe call is left open on the server (its Prometheus gauges);
* after the sessions' TTL, Redis holds as many keys as before the soak.

tests/test_scale_out.py runs the same function for a bounded number of sessions in CI.
"""
from __future__ import annotations

import argparse
import json
import random
import select
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moodstream.wire import bearer_metadata

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import rss_mb as _rss_mb, stop_process  # noqa: E402
from loopback import pcm_chunks  # noqa: E402

RATE = 16000
PARTICIPANTS = [f"p{i}" for i in range(1, 10)]


def rss_mb(pid: int) -> float:
    rss = _rss_mb(pid)
    if rss is None:
        raise RuntimeError(f"no VmRSS for process {pid}")
    return rss


def metric(metrics_port: int, name: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


class ServerProcess:
    """`moodstream server` on 127.0.0.1 (port chosen by the OS), logging to a file."""

    def __init__(self, checkpoint: Path, redis_url: str, tokens: Path, log: Path, ttl_seconds: float,
                 metrics_port: int) -> None:
        # --ttl-days is what the server takes; the half second keeps int(days * 86400) at ttl_seconds.
        ttl_days = (ttl_seconds + 0.5) / 86400
        command = [sys.executable, "-P", "-m", "moodstream.compose.cli", "server", "--checkpoint", str(checkpoint),
                   "--redis", redis_url, "--port", "0", "--tokens", str(tokens), "--precision", "fp32",
                   "--device", "cpu", "--ttl-days", repr(ttl_days), "--metrics-port", str(metrics_port),
                   "--log-level", "warning"]
        with open(log, "ab") as log_file:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file,
                                            stdin=subprocess.DEVNULL)
        self.log = log
        self.port = self._wait_listening()

    def _wait_listening(self, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log.read_text()[-3000:]}")
            if select.select([self.process.stdout], [], [], 0.2)[0]:
                return int(json.loads(self.process.stdout.readline())["listening"].rsplit(":", 1)[1])
        self.close()
        raise RuntimeError(f"the server did not listen within {timeout:.0f} s")

    def close(self) -> None:
        stop_process(self.process, 15)
        self.process.stdout.close()


@dataclass
class SessionOutcome:
    session_id: str
    participant_id: str
    chunk_indices: tuple[int, ...]   # which pool chunks, in seq order
    probability: float | None
    error: str | None


def run_session(stub, pb, metadata, read_metadata, session_id: str, participant: str, pool: list[bytes],
                indices: tuple[int, ...], subscribe: bool, timeout: float = 60.0) -> SessionOutcome:
    """One session as an agent sends it (header, chunks, End), checked from the acks and scores."""
    requests = [pb.StreamRequest(header=pb.SessionHeader(
        session_id=session_id, participant_id=participant, device_id="soak", sample_rate=RATE,
        encoding=pb.AUDIO_ENCODING_PCM_S16LE))]
    requests += [pb.StreamRequest(chunk=pb.Chunk(seq=seq, start_seconds=7.0 * seq, pcm=pool[index]))
                 for seq, index in enumerate(indices)]
    requests.append(pb.StreamRequest(end=pb.End(last_seq=len(indices) - 1)))
    try:
        responses = list(stub.Stream(iter(requests), metadata=metadata, timeout=timeout))
        acks = [(r.ack.seq, r.ack.duplicate) for r in responses if r.WhichOneof("message") == "ack"]
        scores = [r.score for r in responses if r.WhichOneof("message") == "score"]
        expected = [(seq, False) for seq in range(len(indices))]
        if acks != expected or not scores or scores[-1].segments != len(indices):
            return SessionOutcome(session_id, participant, indices, None,
                                  f"acks {acks}, last score {scores[-1] if scores else None}")
        if subscribe:
            call = stub.Subscribe(pb.SubscribeRequest(session_id=session_id), metadata=read_metadata,
                                  timeout=timeout)
            updates = [update for _, update in zip(range(len(indices)), call)]
            call.cancel()
            if [u.seq for u in updates] != list(range(len(indices))):
                return SessionOutcome(session_id, participant, indices, None, "Subscribe missed updates")
        return SessionOutcome(session_id, participant, indices, scores[-1].probability, None)
    except Exception as error:  # reported, counted as a failure
        return SessionOutcome(session_id, participant, indices, None, f"{type(error).__name__}: {error}")


def rss_slope(samples: list[tuple[float, int, float]]) -> float | None:
    """Least-squares growth of the RSS per 1000 sessions after warm-up (a trend, not a check: RSS is noisy)."""
    if len(samples) < 3:
        return None
    sessions = np.array([n for _, n, _ in samples], dtype=float)
    rss = np.array([v for _, _, v in samples])
    return round(float(np.polyfit(sessions, rss, 1)[0]) * 1000, 2)


def redis_key_count(redis_url: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.dbsize())
    finally:
        client.close()


def soak(*, checkpoint: Path, workdir: Path, sessions: int | None = None, minutes: float | None = None,
         concurrency: int = 4, ttl_seconds: int = 3, warmup_sessions: int = 10, pool_size: int = 4,
         chunk_seconds: float = 7.0, rss_growth_mb: float = 40.0, seed: int = 0) -> dict:
    """Run the soak; returns the report (see the module docstring). Give `sessions` or `minutes`."""
    import grpc

    from moodstream.server.auth import create_token
    from moodstream.compose.redis_process import RedisProcess, free_port
    from moodstream.v1 import moodstream_pb2 as pb
    from moodstream.v1 import moodstream_pb2_grpc as pb_grpc

    if (sessions is None) == (minutes is None):
        raise ValueError("give either sessions or minutes")
    tokens = workdir / "tokens.json"
    metadata = bearer_metadata(create_token(tokens, "soak-agent", PARTICIPANTS, []))
    read_metadata = bearer_metadata(create_token(tokens, "soak-reader", [], PARTICIPANTS))
    pool = pcm_chunks(pool_size, chunk_seconds, seed)
    rng = random.Random(seed)
    outcomes: list[SessionOutcome] = []
    rss_samples: list[tuple[float, int, float]] = []  # (seconds, sessions done, RSS MB)
    with RedisProcess(data_dir=workdir / "redis") as redis_process:
        keys_before = redis_key_count(redis_process.url)
        metrics_port = free_port()
        server = ServerProcess(checkpoint, redis_process.url, tokens, workdir / "server.log", ttl_seconds,
                               metrics_port)
        started = time.monotonic()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            stub = pb_grpc.ScreeningStub(channel)
            lock = threading.Lock()
            counter = iter(range(10**9))

            def plan():
                with lock:
                    number = next(counter)
                    indices = tuple(rng.randrange(pool_size) for _ in range(rng.choice((2, 3))))
                    return (f"soak-{number:06d}", PARTICIPANTS[number % len(PARTICIPANTS)], indices,
                            number % 3 == 0)

            def one_batch(count: int) -> None:
                with ThreadPoolExecutor(concurrency) as pool_executor:
                    batch = [plan() for _ in range(count)]
                    for outcome in pool_executor.map(
                            lambda job: run_session(stub, pb, metadata, read_metadata, job[0], job[1], pool, job[2],
                                                    job[3]), batch):
                        outcomes.append(outcome)

            one_batch(warmup_sessions)
            rss_samples.append((time.monotonic() - started, len(outcomes), rss_mb(server.process.pid)))
            warm_rss = rss_samples[-1][2]
            deadline = started + minutes * 60 if minutes is not None else None
            while True:
                left = (sessions - len(outcomes)) if sessions is not None else 4 * concurrency
                if left <= 0 or (deadline is not None and time.monotonic() >= deadline):
                    break
                one_batch(min(left, 4 * concurrency))
                rss_samples.append((time.monotonic() - started, len(outcomes), rss_mb(server.process.pid)))
            end_rss = rss_samples[-1][2]
            # A cancelled call's handler finishes on the server a moment after the client moved on.
            gauges_deadline = time.monotonic() + 10
            while True:
                streams_open = metric(metrics_port, "moodstream_streams_active")
                subscribers_open = metric(metrics_port, "moodstream_subscribers_active")
                if (streams_open == 0 and subscribers_open == 0) or time.monotonic() > gauges_deadline:
                    break
                time.sleep(0.1)
            soak_seconds = time.monotonic() - started
            wait_started = time.monotonic()
            keys_at_end = redis_key_count(redis_process.url)
            keys_after_ttl = keys_at_end
            while time.monotonic() - wait_started < ttl_seconds + 20 and keys_after_ttl != keys_before:
                time.sleep(0.2)
                keys_after_ttl = redis_key_count(redis_process.url)
            ttl_wait = time.monotonic() - wait_started
        finally:
            channel.close()
            server.close()
    failures = [o for o in outcomes if o.error is not None]
    checks = {
        "every_session_completed": not failures,
        "rss_flat": end_rss - warm_rss <= rss_growth_mb,
        "no_open_streams": streams_open == 0 and subscribers_open == 0,
        "redis_keys_back_to_baseline": keys_after_ttl == keys_before,
    }
    return {
        "sessions": len(outcomes),
        "chunks": sum(len(o.chunk_indices) for o in outcomes),
        "concurrency": concurrency,
        "soak_seconds": round(soak_seconds, 1),
        "failures": [f"{o.session_id}: {o.error}" for o in failures[:10]],
        "rss_mb_after_warmup": round(warm_rss, 1),
        "rss_mb_at_end": round(end_rss, 1),
        "rss_mb_max": round(max(v for _, _, v in rss_samples), 1),
        "rss_mb_per_1000_sessions_after_warmup": rss_slope(rss_samples),
        "rss_mb_samples": [(round(t, 1), n, round(v, 1)) for t, n, v in rss_samples[:: max(1, len(rss_samples) // 50)]],
        "streams_active_at_end": streams_open,
        "subscribers_active_at_end": subscribers_open,
        "ttl_seconds": ttl_seconds,
        "redis_keys_before": keys_before,
        "redis_keys_at_end": keys_at_end,
        "redis_keys_after_ttl": keys_after_ttl,
        "seconds_until_keys_expired": round(ttl_wait, 1),
        "checks": checks,
        "passed": all(checks.values()),
        "outcomes": outcomes,
        "pool": pool,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to keep sessions going")
    parser.add_argument("--concurrency", type=int, default=4, help="sessions streaming at once")
    parser.add_argument("--ttl-seconds", type=int, default=5, help="the server's session TTL during the soak")
    parser.add_argument("--rss-growth-mb", type=float, default=40.0, help="allowed server RSS growth after warm-up")
    parser.add_argument("--warmup-sessions", type=int, default=200, help="sessions before the reference RSS is taken")
    parser.add_argument("--checkpoint", help="checkpoint folder (default: a tiny untrained model)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="moodstream-soak-") as tmp:
        workdir = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else workdir / "tiny"
        if not args.checkpoint:
            import torch

            from moodstream.model import ModelConfig, ScreeningModel

            torch.manual_seed(0)
            ScreeningModel(ModelConfig.tiny()).save_pretrained(checkpoint)
        report = soak(checkpoint=checkpoint, workdir=workdir, minutes=args.minutes, concurrency=args.concurrency,
                      ttl_seconds=args.ttl_seconds, rss_growth_mb=args.rss_growth_mb,
                      warmup_sessions=args.warmup_sessions)
    report.pop("outcomes")
    report.pop("pool")
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
