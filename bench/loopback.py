"""End to end on loopback: simulated agents -> gRPC -> scoring server -> real Redis.

    python bench/loopback.py [--size tiny|base] [--agents 20] [--chunks 4]
    python bench/loopback.py --checkpoint DIR [--whisper-input 30s chunk] [--size base|tiny]

Without --checkpoint:

Runs a real `moodstream server` process (random weights of the chosen size,
its own precision and batch choice) and a real Redis process with an
append-only file on 127.0.0.1: `--appendfsync always` (the default) is how
deploy/ runs it (every acknowledged chunk is on disk), `everysec` the
cheaper setting docs/reliability.md describes. N simulated agents, each one gRPC
stream, send 7 s speech-like chunks at a given pace and time each chunk from
its send to the score update that carries it.

1. Real time: N agents at real-time pace (one chunk per 7 s each).
   Chunk->score latency p50/p95/p99 against the baseline measured in the same
   run: one chunk alone through the server's encoder path (BatchingEncoder,
   its worker thread and precision) in this process, without gRPC or Redis.
   The naive fp32 encode on the main thread is reported too: for the tiny
   model, torch's OpenMP threads make a forward pass from a worker thread
   take ~4 ms longer than from the main thread (3 % for the base size).
2. Ceiling: the same agents at an accelerated pace, doubling until the server
   no longer keeps up (a chunk lost, or p95 latency above the chunk interval,
   i.e. a growing queue, or above --p95-limit-s). N x pace is the number of
   live real-time agents that level stands for.
Also reported: server CPU (share of one core) and peak RSS, and Redis
round trips per applied chunk (commands clients sent, seen with MONITOR at
real-time pace; the apply script's own calls are not round trips).

With --checkpoint: live-stream capacity (bench/capacity.py), the largest
number of real-time streams the server holds with p95 chunk->score under
--p95-limit-s (2 s), for the checkpoint (at each --whisper-input length) and
for the random-weight --size model (base by default) as the baseline of the
same run; results to --out (capacity.json, capacity.md).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from common import cpu_seconds, machine, markdown_table, peak_rss_mb, percentile, rss_mb  # noqa: E402
from encoder import CHUNK_SECONDS, build_model, speech_like_chunks  # noqa: E402


def pcm_chunks(count: int, seconds: float = CHUNK_SECONDS, seed: int = 1) -> list[bytes]:
    """Speech-like chunks as the wire carries them: PCM s16le."""
    return [(np.clip(w, -1, 1) * 32767).astype("<i2").tobytes()
            for w in speech_like_chunks(count, seed=seed, seconds=seconds)]


class Server:
    """`moodstream server` as a child process, on a free port, ready when gRPC health says SERVING."""

    def __init__(self, checkpoint: Path, redis_url: str, max_batch: int | None, max_wait_ms: float,
                 precision: str | None = None) -> None:
        from moodstream.compose.redis_process import free_port

        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="moodstream-bench-server-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moodstream.compose.cli", "server", "--checkpoint", str(checkpoint), "--redis", redis_url,
             "--port", str(self.port), "--allow-unauthenticated", "--max-wait-ms", str(max_wait_ms),
             "--log-level", "info", *(["--max-batch", str(max_batch)] if max_batch else []),
             *(["--precision", precision] if precision else [])],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 180.0) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise SystemExit(f"server exited: {Path(self.log.name).read_text()[-2000:]}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise SystemExit("server did not become ready")

    def precision(self) -> str | None:
        """The encoder precision the server chose, from its start-up log line."""
        match = re.search(r"serving .* precision (\w+)", Path(self.log.name).read_text())
        return match.group(1) if match else None

    def tuning(self) -> str | None:
        """What the server's encoder measured at start-up (or took from its tuning cache), from its log."""
        match = re.search(r"encoder: (precision .*)", Path(self.log.name).read_text())
        return match.group(1) if match else None

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.unlink(self.log.name)


async def one_agent(stub, pb, chunks: list[bytes], interval: float, latencies: list[float],
                    chunk_seconds: float = CHUNK_SECONDS, first_timed: int = 0) -> None:
    """One stream sending `chunks` every `interval` s; latencies of chunks from `first_timed` on."""
    session = f"bench-{uuid.uuid4().hex[:12]}"
    sent_at: dict[int, float] = {}
    queue: asyncio.Queue = asyncio.Queue()

    async def requests():
        yield pb.StreamRequest(header=pb.SessionHeader(
            session_id=session, participant_id="bench", device_id="bench", sample_rate=16000,
            encoding=pb.AUDIO_ENCODING_PCM_S16LE))
        started = time.perf_counter()
        for seq, pcm in enumerate(chunks):
            delay = started + seq * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[seq] = time.perf_counter()
            yield pb.StreamRequest(chunk=pb.Chunk(seq=seq, start_seconds=seq * chunk_seconds, pcm=pcm))
        yield pb.StreamRequest(end=pb.End(last_seq=len(chunks) - 1))
        await queue.get()  # keep the request side open until the server finishes

    call = stub.Stream(requests(), timeout=600)
    try:
        async for response in call:
            if response.WhichOneof("message") == "score":
                seq = response.score.segments - 1
                if seq >= first_timed:
                    latencies.append(time.perf_counter() - sent_at[seq])
    finally:
        queue.put_nowait(None)


async def stream_level(port: int, agents: int, chunks: list[bytes], speed: float,
                       chunk_seconds: float = CHUNK_SECONDS) -> dict:
    import grpc

    from moodstream.v1 import moodstream_pb2 as pb
    from moodstream.v1 import moodstream_pb2_grpc as pb_grpc

    interval = chunk_seconds / speed
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ScreeningStub(channel)
        started = time.perf_counter()
        # Agents start spread over one chunk interval, as real sessions do.
        tasks = []
        for index in range(agents):
            tasks.append(asyncio.create_task(one_agent(stub, pb, chunks, interval, latencies, chunk_seconds)))
            await asyncio.sleep(interval / agents)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        wall = time.perf_counter() - started
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {"agents": agents, "speed": speed, "chunk_interval_s": interval, "chunks_sent": agents * len(chunks),
            "chunks_scored": len(latencies), "lost": agents * len(chunks) - len(latencies),
            "errors": errors[:3], "wall_s": wall,
            "p50_ms": percentile(latencies, 50) * 1000, "p95_ms": percentile(latencies, 95) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000}


class RedisRoundTrips:
    """Counts the commands clients send to Redis (MONITOR; a Lua script's own calls are not round trips)."""

    def __init__(self, url: str) -> None:
        import threading

        import redis

        self.client = redis.Redis.from_url(url)
        self.by_command: dict[str, int] = {}
        self.ready = threading.Event()
        self.closing = threading.Event()
        self.monitor = None
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()
        self.ready.wait(5)

    def _listen(self) -> None:
        import redis

        try:
            with self.client.monitor() as monitor:
                self.monitor = monitor
                self.ready.set()
                for entry in monitor.listen():
                    if entry.get("client_type") == "lua":
                        continue
                    name = entry["command"].split(" ", 1)[0].upper()
                    if name == "MONITOR":
                        continue
                    self.by_command[name] = self.by_command.get(name, 0) + 1
        except (redis.RedisError, OSError, ValueError):
            if not self.closing.is_set():  # closing cuts the connection under listen(): expected then only
                raise

    def close(self) -> dict[str, int]:
        counts = dict(self.by_command)
        self.closing.set()
        if self.monitor is not None:
            self.monitor.connection.disconnect()
        self.thread.join(5)
        self.client.close()
        return counts


def run(size: str = "tiny", agents: int = 20, chunks_per_agent: int = 4, max_speed: float = 256.0,
        max_batch: int | None = None, max_wait_ms: float = 5.0, log=print, appendfsync: str = "always",
        p95_limit_s: float | None = None, checkpoint: str | None = None, whisper_input: str | None = None,
        precision: str | None = None) -> dict:
    from moodstream.compose.redis_process import RedisProcess

    model = build_model(size, checkpoint, whisper_input)
    chunk_seconds = model.config.segment_seconds
    if checkpoint:
        size = row_name(model, checkpoint)
    chunks = pcm_chunks(chunks_per_agent, seconds=chunk_seconds)
    # Baselines: one chunk through the same model in this process, no network, no Redis: through the
    # server's own encoder path (its worker thread and precision), and naive fp32 on the main thread.
    wave = np.frombuffer(chunks[0], dtype="<i2").astype(np.float32) / 32768.0
    single = single_chunk_server_path(model, wave, precision=precision or "auto")
    model.encode_segments([wave])
    naive = statistics.median(_timed(lambda: model.encode_segments([wave])) for _ in range(9))
    levels = []
    with tempfile.TemporaryDirectory() as tmp, \
            RedisProcess(appendonly=True, appendfsync=appendfsync).start() as redis_server:
        saved = model.save_pretrained(Path(tmp) / "checkpoint")
        del model
        server = Server(saved, redis_server.url, max_batch, max_wait_ms, precision)
        precision = server.precision()
        try:
            speed = 1.0
            while speed <= max_speed:
                # Round trips are counted at real-time pace only: MONITOR itself costs Redis time.
                round_trips = RedisRoundTrips(redis_server.url) if speed == 1.0 else None
                cpu_before = cpu_seconds(server.process.pid)
                level = asyncio.run(stream_level(server.port, agents, chunks, speed, chunk_seconds))
                level["server_cpu_share_of_one_core"] = (cpu_seconds(server.process.pid) - cpu_before) / level["wall_s"]
                if round_trips is not None:
                    counts = round_trips.close()
                    level["redis_round_trips"] = counts
                    level["redis_round_trips_per_chunk"] = sum(counts.values()) / max(level["chunks_scored"], 1)
                level["server_rss_mb"] = rss_mb(server.process.pid)
                limit = min(level["chunk_interval_s"], p95_limit_s or float("inf"))
                level["held"] = level["lost"] == 0 and not level["errors"] and level["p95_ms"] / 1000 < limit
                level["realtime_agents_equivalent"] = agents * speed
                levels.append(level)
                log(f"loopback {size} {agents} agents x{speed:g}: p50 {level['p50_ms']:.0f} ms, "
                    f"p95 {level['p95_ms']:.0f} ms, lost {level['lost']}, held {level['held']}")
                if not level["held"]:
                    break
                speed *= 2
            server_peak = peak_rss_mb(server.process.pid)
        finally:
            server.close()
    held = [level for level in levels if level["held"]]
    return {"size": size, "checkpoint": checkpoint, "chunk_seconds": chunk_seconds, "precision": precision,
            "agents": agents, "chunks_per_agent": chunks_per_agent,
            "redis_appendfsync": appendfsync, "p95_limit_s": p95_limit_s,
            "single_chunk_encode_ms": single * 1000, "naive_main_thread_fp32_encode_ms": naive * 1000,
            "server_peak_rss_mb": server_peak,
            "real_time": levels[0],
            "p95_over_single_encode": levels[0]["p95_ms"] / (single * 1000),
            "ceiling_realtime_agents": max((level["realtime_agents_equivalent"] for level in held), default=0),
            "levels": levels}


def row_name(model, checkpoint: str | None, size: str = "base") -> str:
    """How a report names the model a row measured."""
    if not checkpoint:
        return f"random {size}"
    return f"checkpoint, Whisper input {model.config.whisper_input}" if model.backbone.is_whisper else "checkpoint"


def single_chunk_server_path(model, wave: np.ndarray, repeats: int = 9, precision: str = "auto") -> float:
    """Median seconds for one chunk alone through the server's BatchingEncoder at the server's precision."""
    from moodstream.server.encoder import BatchingEncoder

    async def main() -> float:
        encoder = BatchingEncoder(model, precision=precision)
        await encoder.start()
        try:
            await encoder.encode(wave)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                await encoder.encode(wave)
                times.append(time.perf_counter() - started)
            return statistics.median(times)
        finally:
            await encoder.stop()

    return asyncio.run(main())


def _timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def table(result: dict) -> str:
    rows = [[f"{level['agents']} × {level['speed']:g}", level["realtime_agents_equivalent"], level["chunks_scored"],
             level["lost"], level["p50_ms"], level["p95_ms"], level["p99_ms"],
             f"{level['p95_ms'] / result['single_chunk_encode_ms']:.1f}×",
             level["server_cpu_share_of_one_core"], level.get("redis_round_trips_per_chunk"),
             "yes" if level["held"] else "no"] for level in result["levels"]]
    return markdown_table(["agents × pace", "real-time agents", "chunks scored", "lost", "p50 ms", "p95 ms",
                           "p99 ms", "p95 / one encode", "server CPU (cores)", "Redis round trips/chunk", "kept up"],
                          rows)


def main() -> None:
    import capacity

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "base"), default=None,
                        help="random-weight model (default tiny; with --checkpoint the baseline row, default base)")
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=4, help="chunks each agent sends per level")
    parser.add_argument("--max-speed", type=float, default=256.0, help="stop doubling the pace here")
    parser.add_argument("--max-batch", type=int, default=None, help="default: the server's own")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--appendfsync", choices=("always", "everysec"), default="always",
                        help="Redis fsync policy: always is how deploy/ runs it")
    parser.add_argument("--p95-limit-s", type=float, default=None,
                        help="a level also fails when its p95 chunk->score exceeds this (default: the chunk interval; "
                             f"with --checkpoint {capacity.P95_LIMIT_S:g} s)")
    capacity.add_arguments(parser)
    args = parser.parse_args()
    if args.checkpoint:
        capacity.main(args, parser)
        return
    if args.whisper_input:
        parser.error("--whisper-input needs a Whisper --checkpoint")
    result = {"machine": machine(), **run(args.size or "tiny", args.agents, args.chunks, args.max_speed,
                                          args.max_batch, args.max_wait_ms,
                                          log=lambda line: print(line, file=sys.stderr),
                                          appendfsync=args.appendfsync, p95_limit_s=args.p95_limit_s)}
    print(json.dumps(result, indent=2))
    print(table(result))

if __name__ == "__main__":
    main()
