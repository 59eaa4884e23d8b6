"""Live-stream capacity: the most real-time streams one server holds with p95 chunk->score under a limit.

    python bench/loopback.py --checkpoint DIR [--whisper-input 30s chunk] [--size base|tiny]
                             [--p95-limit-s 2] [--start-streams 4] [--max-streams 512]
                             [--warmup-chunks 1] [--window-chunks 3] [--resolution 0.1]
                             [--out bench/results] [--note TEXT]

Each row is a real `moodstream server` process (its own precision and batch
choice unless --precision / --max-batch say otherwise) on its own Redis with
an append-only file (appendfsync always, as deploy/ runs it), all on
127.0.0.1. A step streams N simulated agents at real-time pace: each sends
one chunk of the model's segment length (7 s) every segment length, the N
starting spread over one interval as independent sessions do. A chunk's
latency runs from its send to the score update that carries it. The first
--warmup-chunks of each stream are not timed (the session opening, and
streams still starting); the next --window-chunks are the step's
steady-state window. A step holds when every chunk of its window was
scored, no stream failed, and the window's p95 is under the limit.

The search: N doubles from --start-streams until a step fails (or
--max-streams holds), then bisects between the largest N that held and the
smallest that failed until they are within --resolution of each other
(taking capacity to fall with N). The answer is the largest N that held.
Before each step the bench waits until the server's CPU settles, so a
backlog a failed step left does not count against the next.

Rows, one after the other in the same run: the random-weight --size model
(base by default, the model of the published capacity numbers) as the
baseline, then the checkpoint at each --whisper-input length (the same
weights through ScreeningModel.with_whisper_input: for timing only, its
scores are not the trained model's), or at its own setting. Each row's
answer is printed as a ratio to the baseline's. The agents run in this
process on the same cores as the server; their CPU share is in every step.
Writes capacity.json and capacity.md to --out after each row.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_seconds, machine, machine_line, markdown_table, peak_rss_mb, percentile  # noqa: E402
from encoder import build_model  # noqa: E402
from loopback import Server, one_agent, pcm_chunks, row_name  # noqa: E402

P95_LIMIT_S = 2.0
GOAL_STREAMS = 40  # live streams one 2-core machine should hold with a trained checkpoint
RESULTS = Path(__file__).resolve().parent / "results"


def add_arguments(parser) -> None:
    group = parser.add_argument_group("live-stream capacity (--checkpoint; bench/capacity.py)")
    group.add_argument("--checkpoint", type=Path, help="measure this checkpoint's live-stream capacity")
    group.add_argument("--whisper-input", nargs="+", choices=("30s", "chunk"),
                       help="a Whisper checkpoint at each of these input lengths (default: its own)")
    group.add_argument("--start-streams", type=int, default=4, help="first step (default: %(default)s)")
    group.add_argument("--max-streams", type=int, default=512, help="stop doubling here (default: %(default)s)")
    group.add_argument("--warmup-chunks", type=int, default=1,
                       help="chunks of each stream not timed (default: %(default)s)")
    group.add_argument("--window-chunks", type=int, default=3,
                       help="timed chunks of each stream per step (default: %(default)s)")
    group.add_argument("--resolution", type=float, default=0.1,
                       help="bisect until held and failed N are this share apart (default: %(default)s)")
    group.add_argument("--precision", help="the server's --precision (default: its own, auto)")
    group.add_argument("--out", type=Path, default=RESULTS, help="folder for capacity.json and capacity.md")
    group.add_argument("--note", default="", help="what the report should say about the machine (other jobs, ...)")


def search(holds: Callable[[int], bool], start: int, max_streams: int, resolution: float) -> int:
    """The largest N in 1..max_streams for which holds(N), doubling from start and then bisecting."""
    good, bad = 0, None
    streams = max(1, min(start, max_streams))
    while bad is None:
        if not holds(streams):
            bad = streams
        elif streams >= max_streams:
            return streams
        else:
            good, streams = streams, min(2 * streams, max_streams)
    while bad - good > max(1, int(good * resolution)):
        middle = (good + bad) // 2
        if holds(middle):
            good = middle
        else:
            bad = middle
    return good


async def stream_step(port: int, streams: int, chunks: list[bytes], chunk_seconds: float, warmup: int) -> dict:
    import grpc

    from moodstream.v1 import moodstream_pb2 as pb
    from moodstream.v1 import moodstream_pb2_grpc as pb_grpc

    latencies: list[float] = []

    async def agent(stub, offset: float) -> None:
        await asyncio.sleep(offset)
        await one_agent(stub, pb, chunks, chunk_seconds, latencies, chunk_seconds, first_timed=warmup)

    # An overloaded step drains its backlog before it ends; this bounds a server that stopped answering.
    deadline = chunk_seconds * (len(chunks) + 1) + 300
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ScreeningStub(channel)
        started = time.perf_counter()
        try:
            results = await asyncio.wait_for(asyncio.gather(
                *(agent(stub, index * chunk_seconds / streams) for index in range(streams)),
                return_exceptions=True), deadline)
        except TimeoutError:
            results = [TimeoutError(f"step not done in {deadline:.0f} s")]
        wall = time.perf_counter() - started
    timed = streams * (len(chunks) - warmup)
    return {"streams": streams, "chunks_timed": timed, "chunks_scored": len(latencies),
            "lost": timed - len(latencies), "errors": [repr(r) for r in results if isinstance(r, BaseException)][:3],
            "wall_s": wall, "p50_ms": percentile(latencies, 50) * 1000, "p95_ms": percentile(latencies, 95) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000}


def wait_until_settled(pid: int, share_of_one_core: float = 0.2, timeout_s: float = 120.0) -> None:
    """Until the server process uses under `share_of_one_core` over one second."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - before < share_of_one_core:
            return


def measure_row(name: str, checkpoint: Path, chunk_seconds: float, options, log) -> dict:
    from moodstream.compose.redis_process import RedisProcess

    limit = options.p95_limit_s or P95_LIMIT_S
    chunks = pcm_chunks(options.warmup_chunks + options.window_chunks, seconds=chunk_seconds)
    load_at_start = os.getloadavg()[0]
    steps: list[dict] = []
    with RedisProcess(appendonly=True, appendfsync=options.appendfsync).start() as redis_server:
        server = Server(checkpoint, redis_server.url, options.max_batch, options.max_wait_ms, options.precision)
        pid = server.process.pid
        try:
            precision, tuning = server.precision(), server.tuning()
            log(f"capacity {name}: server precision {precision}; {tuning}")

            def holds(streams: int) -> bool:
                wait_until_settled(pid)
                server_cpu, own_cpu = cpu_seconds(pid), cpu_seconds()
                step = asyncio.run(stream_step(server.port, streams, chunks, chunk_seconds, options.warmup_chunks))
                step["server_cpu_cores"] = (cpu_seconds(pid) - server_cpu) / step["wall_s"]
                step["agents_cpu_cores"] = (cpu_seconds() - own_cpu) / step["wall_s"]
                step["held"] = step["lost"] == 0 and not step["errors"] and step["p95_ms"] / 1000 < limit
                steps.append(step)
                log(f"capacity {name}: {streams} streams: p95 {step['p95_ms']:.0f} ms, lost {step['lost']}, "
                    f"server {step['server_cpu_cores']:.2f} cores, held {step['held']}")
                return step["held"]

            capacity = search(holds, options.start_streams, options.max_streams, options.resolution)
            server_peak = peak_rss_mb(pid)
        finally:
            server.close()
    at_capacity = next((step for step in steps if step["streams"] == capacity), None)
    failed = [step["streams"] for step in steps if not step["held"]]
    return {"name": name, "chunk_seconds": chunk_seconds, "precision": precision, "tuning": tuning,
            "capacity": capacity, "capped_at_max_streams": capacity >= options.max_streams,
            "p95_ms_at_capacity": at_capacity["p95_ms"] if at_capacity else None,
            "smallest_failed": min(failed) if failed else None, "server_peak_rss_mb": server_peak,
            "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()[0], "steps": steps}


def prepare_rows(options, folder: Path) -> list[dict]:
    """Each row's model saved as a checkpoint folder, the baseline first; a bad checkpoint fails before any run."""
    rows = []
    size = options.size or "base"
    for index, whisper_input in enumerate(options.whisper_input or [None]):
        model = build_model(size, str(options.checkpoint), whisper_input)
        rows.append({"name": row_name(model, str(options.checkpoint)), "chunk_seconds": model.config.segment_seconds,
                     "parameters": model.parameter_counts(),
                     "checkpoint": model.save_pretrained(folder / f"checkpoint-{index}")})
        del model
    model = build_model(size)
    rows.insert(0, {"name": row_name(model, None, size), "chunk_seconds": model.config.segment_seconds,
                    "parameters": model.parameter_counts(), "checkpoint": model.save_pretrained(folder / "baseline")})
    return rows


def run(options, log=print, save: Callable[[dict], None] = lambda result: None) -> dict:
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "note": options.note, "command": shlex.join(["python", "bench/loopback.py",
                                                                                 *sys.argv[1:]]),
              "checkpoint": str(options.checkpoint), "p95_limit_s": options.p95_limit_s or P95_LIMIT_S,
              "redis_appendfsync": options.appendfsync, "warmup_chunks": options.warmup_chunks,
              "window_chunks": options.window_chunks, "rows": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moodstream-capacity-") as folder:
        try:
            rows = prepare_rows(options, Path(folder))
        except ValueError as error:  # e.g. --whisper-input on a checkpoint that is not Whisper
            raise SystemExit(f"bench/loopback.py: {error}") from None
        for row in rows:
            measured = measure_row(row["name"], row["checkpoint"], row["chunk_seconds"], options, log)
            result["rows"].append({**measured, "parameters": row["parameters"]})
            baseline = result["rows"][0]["capacity"]
            for done in result["rows"]:
                done["ratio_to_baseline"] = done["capacity"] / baseline if baseline else None
            result["wall_minutes"] = (time.perf_counter() - started) / 60
            result["load_average_at_end"] = os.getloadavg()[0]
            save(result)
    return result


def answer(row: dict, limit_s: float) -> str:
    held = f"≥ {row['capacity']}" if row["capped_at_max_streams"] else str(row["capacity"])
    failed = f", {row['smallest_failed']} failed" if row["smallest_failed"] else ""
    return f"{held} live streams with p95 < {limit_s:g} s{failed}"


def markdown(result: dict) -> str:
    limit = result["p95_limit_s"]
    rows = result["rows"]
    parts = [f"# Live-stream capacity, {result['date']}", "",
             f"Machine: {machine_line(result['machine'])}, at the end "
             f"{result.get('load_average_at_end', float('nan')):.1f}. {result['note']}".rstrip(), "",
             f"Run: `{result['command']}` ({result.get('wall_minutes', 0):.1f} min). Real-time streams, "
             f"{result['warmup_chunks']} chunk(s) of each untimed, then {result['window_chunks']} timed; Redis "
             f"appendfsync {result['redis_appendfsync']}; the first row is the baseline of the same run.", "",
             markdown_table(["model", "server encoder", f"live streams, p95 < {limit:g} s", "vs baseline",
                             "p95 ms at that N", "smallest N that failed", f"goal ≥ {GOAL_STREAMS}"],
                            [[row["name"], row["precision"], f"≥ {row['capacity']}" if row["capped_at_max_streams"]
                              else row["capacity"], "–" if row["ratio_to_baseline"] is None
                              else f"{row['ratio_to_baseline']:.2f}×", row["p95_ms_at_capacity"],
                              row["smallest_failed"], "yes" if row["capacity"] >= GOAL_STREAMS else "no"]
                             for row in rows]), ""]
    lengths = {row["name"].rsplit(" ", 1)[-1]: row for row in rows if "Whisper input" in row["name"]}
    if {"30s", "chunk"} <= set(lengths):
        thirty, chunk = lengths["30s"], lengths["chunk"]
        if thirty["capped_at_max_streams"] or chunk["capped_at_max_streams"] or not thirty["capacity"]:
            parts += ["Whisper input chunk against 30s: not compared (a row held --max-streams, or 30s held none).", ""]
        else:
            parts += [f"Whisper input chunk against 30s: {chunk['capacity'] / thirty['capacity']:.2f}×.", ""]
    for row in rows:
        parts += [f"## {row['name']}: {answer(row, limit)}", "",
                  f"{row['chunk_seconds']:g} s chunks; server encoder: {row['tuning'] or row['precision']}; server "
                  f"peak RSS {row['server_peak_rss_mb'] or float('nan'):.0f} MB; load average "
                  f"{row['load_average_at_start']:.1f} at the start, {row['load_average_at_end']:.1f} at the end. "
                  f"Steps in the order run:", "",
                  markdown_table(["streams", "chunks timed", "scored", "lost", "p50 ms", "p95 ms", "p99 ms",
                                  "server CPU (cores)", "agents' CPU (cores)", "held"],
                                 [[s["streams"], s["chunks_timed"], s["chunks_scored"], s["lost"], s["p50_ms"],
                                   s["p95_ms"], s["p99_ms"], s["server_cpu_cores"], s["agents_cpu_cores"],
                                   "yes" if s["held"] else "no"] for s in row["steps"]]), ""]
        parts += [f"Errors: {'; '.join(s['errors'])}" for s in row["steps"] if s["errors"]]
    return "\n".join(parts)


def main(options, parser) -> None:
    if options.warmup_chunks < 0 or options.window_chunks < 1 or options.start_streams < 1:
        parser.error("--warmup-chunks >= 0, --window-chunks >= 1 and --start-streams >= 1")
    options.out.mkdir(parents=True, exist_ok=True)

    def save(result: dict) -> None:
        # After every row, so a run cut short keeps what it measured.
        (options.out / "capacity.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (options.out / "capacity.md").write_text(markdown(result) + "\n")

    result = run(options, log=lambda line: print(line, file=sys.stderr, flush=True), save=save)
    print(markdown(result))
    print(f"\nwritten: {options.out / 'capacity.json'}, {options.out / 'capacity.md'}", file=sys.stderr)
