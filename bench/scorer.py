"""Session scorer: one incremental step vs recomputing the whole session, and what each step writes to Redis.

    python bench/scorer.py [--lengths 10 100 500 2000] [--store-lengths 10 500 2000]

For sessions of n segments, times adding the next segments with the exact
incremental scorer (step, and step plus the state serialisation the server
writes to Redis each time; the mean of 20 consecutive steps from n) against
the batch forward over all n+1 segments,
and reports the state's size in bytes. Uses the paper-size session head
(LSTM 128 + self-attention) on random segment vectors.

The store part applies segments through the server's SessionStore to a real
Redis (append-only file, appendfsync always, as deploy/ runs it) at sessions of
10, 500 and 2000 segments: the bytes each apply sends and its p95 time (step,
serialisation and the atomic apply script), for the head + rows format the
server writes against the whole-state format it wrote before (the baseline,
measured in the same run), the time to load and restore a session, and the
time to load it when the server holds its state in its cache (no rows read,
no restore).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import interleaved_best, machine, markdown_table, percentile  # noqa: E402

DEFAULT_LENGTHS = (10, 100, 500, 2000)
DEFAULT_STORE_LENGTHS = (10, 500, 2000)


def run(lengths=DEFAULT_LENGTHS, rounds: int = 5, steps: int = 20, seed: int = 0) -> dict:
    from moodstream.model import ScreeningModel

    torch.manual_seed(seed)
    model = ScreeningModel(paper_session_head_config()).eval()
    scorer = model.incremental_scorer()
    width = model.config.segment_vector_size
    results = []
    for n in lengths:
        vectors = torch.randn(n + steps, width)
        tip = scorer.init_state()
        for row in vectors[:n]:
            tip, _ = scorer.step(tip, row)

        # The server always steps the newest state, so time `steps` consecutive steps from n.
        def incremental(serialise: bool) -> None:
            state = tip
            for row in vectors[n:]:
                state, _ = scorer.step(state, row)
                if serialise:
                    state.to_bytes()

        timings = interleaved_best({
            "step": lambda: incremental(False),
            "step_and_serialise": lambda: incremental(True),
            "recompute": lambda: model.score(vectors[: n + 1]),
        }, rounds=rounds)
        step = timings["step"] / steps
        step_and_serialise = timings["step_and_serialise"] / steps
        state, incremental_probability = scorer.step(tip, vectors[n])
        results.append({
            "segments": n,
            "step_ms": step * 1000,
            "step_and_serialise_ms": step_and_serialise * 1000,
            "recompute_ms": timings["recompute"] * 1000,
            "speedup_step_vs_recompute": timings["recompute"] / step,
            "speedup_step_and_serialise_vs_recompute": timings["recompute"] / step_and_serialise,
            "state_bytes": len(state.to_bytes()),
            "abs_diff_probability": abs(incremental_probability - model.score(vectors[: n + 1])),
        })
    return {"session_head": {"vector_size": width, "lstm_hidden": model.config.lstm_hidden_size,
                             "attention_size": model.config.attention_size},
            "rows": results}


def store_run(lengths=DEFAULT_STORE_LENGTHS, applies: int = 40, seed: int = 0) -> dict:
    from moodstream.model import ScreeningModel
    from moodstream.compose.redis_process import RedisProcess
    from moodstream.server.redis_connection import connect
    from moodstream.server.store import SessionStore
    from moodstream.server.store_records import KnownState

    torch.manual_seed(seed)
    model = ScreeningModel(paper_session_head_config()).eval()
    scorer = model.incremental_scorer()
    width = model.config.segment_vector_size
    threshold = model.config.decision_threshold

    def score(probability: float, seq: int) -> dict:
        return {"probability": probability, "above_threshold": probability >= threshold, "threshold": threshold,
                "speech_seconds": 7.0 * (seq + 1)}

    async def apply(store, session: str, seq: int, state, vector, whole: bool):
        """One server apply: step, serialise, atomic script. Returns (new state, bytes sent, seconds)."""
        started = time.perf_counter()
        new_state, probability = scorer.step(state, vector)
        head = new_state.to_bytes() if whole else new_state.head_bytes()
        rows = b"" if whole else new_state.row_bytes(state.rows)
        vector_bytes = vector.numpy().astype("<f4").tobytes()
        result = await store.apply_segment(session, "bench", seq, vector_bytes, head, score(probability, seq),
                                           None if seq == 0 else seq - 1, state_rows=rows)
        elapsed = time.perf_counter() - started
        assert result.applied, result
        sent = len(vector_bytes) + len(head) + len(rows) + len(json.dumps(result.score))
        return new_state, sent, elapsed

    async def main(redis_url: str) -> list[dict]:
        client = connect(redis_url)
        store = SessionStore(client, model_version=model.model_version)
        rows = []
        try:
            for n in lengths:
                vectors = torch.randn(n + applies, width)
                row = {"segments": n}
                for fmt, whole in (("whole", True), ("head_rows", False)):
                    session = f"{fmt.replace('_', '-')}-{n}"
                    await store.claim_session(session, "bench")
                    state = scorer.init_state()
                    for seq in range(n):
                        state, _, _ = await apply(store, session, seq, state, vectors[seq], whole)
                    sent, seconds = [], []
                    for seq in range(n, n + applies):
                        state, size, elapsed = await apply(store, session, seq, state, vectors[seq], whole)
                        sent.append(size)
                        seconds.append(elapsed)
                    row[f"{fmt}_bytes_per_apply"] = sum(sent) / len(sent)
                    row[f"{fmt}_apply_ms_p50"] = percentile(seconds, 50) * 1000
                    row[f"{fmt}_apply_ms_p95"] = percentile(seconds, 95) * 1000
                    if not whole:
                        started = time.perf_counter()
                        snapshot = await store.load(session, "bench")
                        restored = scorer.restore(snapshot.state, snapshot.rows)
                        row["load_and_restore_ms"] = (time.perf_counter() - started) * 1000
                        row["restored_equal"] = restored.to_bytes() == state.to_bytes()
                        # What a server that holds the state in its cache does instead (server/state_cache.py).
                        started = time.perf_counter()
                        cached = await store.load(session, "bench", known=KnownState.of(state.head_bytes(), state))
                        row["load_cached_ms"] = (time.perf_counter() - started) * 1000
                        assert cached.rows is None, "the cached state's rows were read"
                rows.append(row)
        finally:
            await client.aclose()
        return rows

    with RedisProcess(appendonly=True, appendfsync="always") as redis_server:
        rows = asyncio.run(main(redis_server.url))
    return {"redis": "appendonly yes, appendfsync always", "applies_per_length": applies, "rows": rows}


def store_table(result: dict) -> str:
    rows = [[r["segments"], f"{r['whole_bytes_per_apply']:,.0f}", f"{r['head_rows_bytes_per_apply']:,.0f}",
             r["whole_apply_ms_p95"], r["head_rows_apply_ms_p95"], r["load_and_restore_ms"], r["load_cached_ms"],
             "yes" if r["restored_equal"] else "NO"] for r in result["rows"]]
    return markdown_table(["segments so far", "bytes per apply, whole state (before)", "bytes per apply, head + row",
                           "p95 apply ms, whole state", "p95 apply ms, head + row", "load + restore ms",
                           "load, state cached ms", "restored state bit-identical"], rows)


def paper_session_head_config():
    """The paper's segment width and session head on a tiny backbone (the backbone plays no part here)."""
    from moodstream.model import ModelConfig

    paper = ModelConfig()
    return ModelConfig.tiny(conv_channels=paper.conv_channels, lstm_hidden_size=paper.lstm_hidden_size,
                            attention_size=paper.attention_size)


def table(result: dict) -> str:
    rows = [[r["segments"], r["step_ms"], r["step_and_serialise_ms"], r["recompute_ms"],
             f"{r['speedup_step_vs_recompute']:.0f}×", f"{r['speedup_step_and_serialise_vs_recompute']:.0f}×",
             f"{r['state_bytes']:,}", f"{r['abs_diff_probability']:.1e}"] for r in result["rows"]]
    return markdown_table(["segments so far", "step ms", "step + state bytes ms", "recompute ms",
                           "step speed-up", "step + bytes speed-up", "state bytes", "|Δp| vs batch"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store-lengths", type=int, nargs="*", default=list(DEFAULT_STORE_LENGTHS),
                        help="session lengths for the Redis part (none: skip it)")
    args = parser.parse_args()
    result = {"machine": machine(), **run(args.lengths, args.rounds)}
    if args.store_lengths:
        result["store"] = store_run(args.store_lengths)
    print(json.dumps(result, indent=2))
    print(table(result))
    if args.store_lengths:
        print()
        print(store_table(result["store"]))


if __name__ == "__main__":
    main()
