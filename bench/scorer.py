"""Session scorer: one incremental step vs recomputing the whole session.

    python bench/scorer.py [--lengths 10 100 500 2000]

For sessions of n segments, times adding the next segments with the exact
incremental scorer (step, and step plus the state serialisation the server
writes to Redis each time; the mean of 20 consecutive steps from n) against
the batch forward over all n+1 segments,
and reports the state's size in bytes. Uses the paper-size session head
(LSTM 128 + self-attention) on random segment vectors.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import interleaved_best, machine, markdown_table  # noqa: E402

DEFAULT_LENGTHS = (10, 100, 500, 2000)


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
    args = parser.parse_args()
    result = {"machine": machine(), **run(args.lengths, args.rounds)}
    print(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
