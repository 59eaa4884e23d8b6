"""Segment encoder: naive one-chunk-at-a-time fp32 vs batching, bf16, int8, compile, and the server's own path.

    python bench/encoder.py [--size base|tiny | --checkpoint DIR] [--batch-sizes 1 2 4 8 16 32] [--compile]

7 s chunks through the encoder side of the model (wav2vec2-base-shaped
backbone with random weights, which is what sets the speed; or the tiny test
model). The baseline is the naive path, measured in the same run: fp32, eager,
one chunk per forward pass. For every variant and batch size: chunks/s, the
real-time factor (compute seconds per second of audio), peak memory and the
speed-up over the baseline; per variant, the accuracy against fp32: the
largest absolute difference of the segment vectors and of the session
probability over all the chunks. `server path` is the server's own
BatchingEncoder fed with every chunk at once: it measures (precision, max
batch) at start-up within the accuracy bound, as the server does without a
tuning cache; the run reports its chunks/s against the best variant measured
in the same run. `--checkpoint` runs a trained checkpoint instead, where
|Δ probability| means something (on random weights it is noise).
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import machine, markdown_table, peak_rss_mb, reset_peak_rss  # noqa: E402

SAMPLE_RATE = 16000
CHUNK_SECONDS = 7.0


def build_model(size: str, checkpoint: str | None = None):
    from moodstream.model import ModelConfig, ScreeningModel

    torch.manual_seed(0)
    if checkpoint:
        model = ScreeningModel.from_pretrained(checkpoint).eval()
        return model.to("cuda") if torch.cuda.is_available() else model
    if size == "tiny":
        config = ModelConfig.tiny()
    else:
        config = ModelConfig(backbone="wav2vec2-base-shape", backbone_config={"model_type": "wav2vec2"})
    model = ScreeningModel(config).eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model


def speech_like_chunks(count: int, seed: int = 0, seconds: float = CHUNK_SECONDS) -> list[np.ndarray]:
    from moodstream.server.encoder import speech_like_waves

    return speech_like_waves(count, seed=seed, seconds=seconds, sample_rate=SAMPLE_RATE)


def variants(model, want_compile: bool) -> dict:
    """name -> (encode(list of waves) -> vectors, note), each precision as the server runs it."""
    from moodstream.server.encoder import cpu_has_fast_bf16, encode_function

    def tensor_output(encode):
        return lambda waves: torch.from_numpy(encode(waves))

    found = {"fp32": (model.encode_segments, "eager")}
    found["bf16 autocast"] = (tensor_output(encode_function(model, "bf16")), "")
    if model.device.type == "cuda":
        found["fp16 autocast"] = (tensor_output(encode_function(model, "fp16")), "")
    else:
        found["int8 dynamic"] = (tensor_output(encode_function(model, "int8")),
                                 "Linear layers" + (", bf16 CNN" if cpu_has_fast_bf16() else ""))
    from moodstream.server.onnx_encoder import ONNX_PATHS, onnxruntime_available

    if model.device.type == "cpu" and onnxruntime_available():
        notes = {"ort-fp32": "ONNX Runtime, basic graph optimisations", "ort-int8": "ONNX Runtime, int8 MatMul weights"}
        for path in ONNX_PATHS:
            found[path] = (tensor_output(encode_function(model, path)), notes[path])
    if want_compile:
        compiled = copy.deepcopy(model)
        compiled.backbone = torch.compile(compiled.backbone, dynamic=True)
        found["fp32 compile"] = (compiled.encode_segments, "torch.compile")
    return found


def measure(encode, waves: list[np.ndarray], batch: int, rounds: int) -> dict:
    """Best-of-`rounds` time to encode `batch` chunks in one forward pass (after a warm-up)."""
    encode(waves[:batch])
    best = float("inf")
    peak = None
    for _ in range(rounds):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        reset_peak_rss()
        started = time.perf_counter()
        encode(waves[:batch])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
        peak = (torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else peak_rss_mb()
    return {"seconds": best, "chunks_per_second": batch / best,
            "real_time_factor": best / (batch * CHUNK_SECONDS), "peak_memory_mb": peak}


def server_path(model, waves: list[np.ndarray], max_batch: int | None, rounds: int) -> dict:
    from moodstream.server.encoder import BatchingEncoder

    async def once(encoder) -> float:
        started = time.perf_counter()
        await asyncio.gather(*(encoder.encode(wave) for wave in waves))
        return time.perf_counter() - started

    async def main() -> dict:
        encoder = BatchingEncoder(model, max_batch=max_batch, max_wait_ms=5.0, precision="auto", tuning_cache=None)
        await encoder.start()
        try:
            await encoder.encode(waves[0])
            best = min([await once(encoder) for _ in range(rounds)])
            vectors = torch.from_numpy(np.stack(await asyncio.gather(*(encoder.encode(w) for w in waves))))
        finally:
            await encoder.stop()
        return {"precision": encoder.precision, "max_batch": encoder.max_batch, "seconds": best, "chunks_per_second": len(waves) / best,
                "real_time_factor": best / (len(waves) * CHUNK_SECONDS), "vectors": vectors}

    return asyncio.run(main())


def accuracy(model, reference: torch.Tensor, vectors: torch.Tensor) -> dict:
    from moodstream.server.encoder import accuracy as server_accuracy

    cosine, probability_error = server_accuracy(model, reference.cpu().numpy(), vectors.cpu().numpy())
    return {"max_abs_diff_vector": float((vectors - reference).abs().max()), "min_cosine": cosine,
            "abs_diff_probability": probability_error}


def run(size: str = "base", batch_sizes=(1, 2, 4, 8, 16, 32), rounds: int = 2, want_compile: bool = False,
        server_max_batch: int | None = None, log=print, checkpoint: str | None = None) -> dict:
    from moodstream.server.encoder import within_bound

    model = build_model(size, checkpoint)
    waves = speech_like_chunks(max(batch_sizes))
    found = variants(model, want_compile)
    reference = model.encode_segments(waves)
    rows = []
    baseline = None
    for name, (encode, note) in found.items():
        vectors = torch.cat([encode(waves[i:i + 8]) for i in range(0, len(waves), 8)])
        quality = accuracy(model, reference, vectors)
        for batch in batch_sizes:
            # Long batches take tens of seconds on a CPU: one timed round is enough there.
            timing = measure(encode, waves, batch, rounds if batch <= 4 else 1)
            if name == "fp32" and batch == 1:
                baseline = timing["chunks_per_second"]
            row = {"variant": name, "note": note, "batch": batch, **timing, **quality,
                   "speedup_vs_naive": timing["chunks_per_second"] / baseline}
            rows.append(row)
            log(f"encoder {size} {name:14s} batch {batch:2d}: {timing['chunks_per_second']:.2f} chunks/s "
                f"({row['speedup_vs_naive']:.2f}x naive)")
    served = server_path(model, waves, server_max_batch, rounds)
    quality = accuracy(model, reference, served.pop("vectors"))
    rows.append({"variant": "server path", "note": f"{served['precision']}, max batch {served.pop('max_batch')}",
                 "batch": len(waves), **served, **quality, "peak_memory_mb": None,
                 "speedup_vs_naive": served["chunks_per_second"] / baseline})
    # The best variant a server could have run: within the bound, at any measured batch size.
    eligible = [r for r in rows[:-1] if within_bound(r["min_cosine"], r["abs_diff_probability"])]
    best = max(eligible, key=lambda r: r["chunks_per_second"])
    server_share = served["chunks_per_second"] / best["chunks_per_second"]
    log(f"encoder {size} server path ({rows[-1]['note']}): {served['chunks_per_second']:.2f} chunks/s "
        f"({rows[-1]['speedup_vs_naive']:.2f}x naive, {server_share:.0%} of the best variant "
        f"{best['variant']} batch {best['batch']})")
    return {"size": "checkpoint" if checkpoint else size, "checkpoint": checkpoint,
            "parameters": model.parameter_counts(), "device": str(model.device),
            "naive_chunks_per_second": baseline, "best_variant": {"variant": best["variant"], "batch": best["batch"],
                                                                  "chunks_per_second": best["chunks_per_second"]},
            "server_path_share_of_best": server_share, "rows": rows}


def table(result: dict) -> str:
    rows = [[r["variant"] + (f" ({r['note']})" if r["note"] else ""), r["batch"], r["chunks_per_second"],
             r["real_time_factor"], r["peak_memory_mb"], f"{r['speedup_vs_naive']:.2f}×",
             f"{r['max_abs_diff_vector']:.1e}", f"{r['min_cosine']:.5f}", f"{r['abs_diff_probability']:.1e}"]
            for r in result["rows"]]
    return markdown_table(["variant", "batch", "chunks/s", "RTF", "peak MB", "vs naive", "max |Δ vector|",
                           "min cosine", "|Δ probability|"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("base", "tiny"), default="base",
                        help="random-weight model: wav2vec2-base shape, or the tiny test model")
    parser.add_argument("--checkpoint", help="a checkpoint folder instead of --size (accuracy on trained weights)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (needs a C++ compiler)")
    args = parser.parse_args()
    result = {"machine": machine(), **run(args.size, args.batch_sizes, args.rounds, args.compile,
                                          log=lambda line: print(line, file=sys.stderr), checkpoint=args.checkpoint)}
    print(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
