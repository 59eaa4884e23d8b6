"""Segment encoder: naive one-chunk-at-a-time fp32 vs batching, bf16, int8, compile, and the server's own path.

    python bench/encoder.py [--size base|tiny | --checkpoint DIR [--whisper-input 30s chunk]]
                            [--batch-sizes 1 2 4 8 16 32] [--compile]

7 s chunks through the encoder side of the model (wav2vec2-base-shaped
backbone with random weights, which is what sets the speed; or the tiny test
model). The baseline is the naive path, measured in the same run: fp32, eager,
one chunk per forward pass. For every variant and batch size: chunks/s, the
real-time factor (compute seconds per second of audio), peak memory and the
speed-up over the baseline; per variant, the accuracy against fp32: the
largest absolute difference of the segment vectors and of the session
probability over all the chunks. A path that does not apply to the model or
this machine is left out with the reason printed. `server path` is the server's own
BatchingEncoder fed with up to 4 chunks at once: it measures (precision, max
batch) at start-up within the accuracy bound, as the server does without a
tuning cache; the run reports its chunks/s against the best variant measured
in the same run. Every variant at every batch size up to 4, and the server
path, take turns round by round, so load on a shared machine hits them alike;
each keeps its best round (larger batches: one round each). `--checkpoint` runs a trained checkpoint instead, where
|Δ probability| means something (on random weights it is noise), with chunks of its own segment length.
`--whisper-input` runs a Whisper checkpoint at each input length given (the same weights; ModelConfig.whisper_input),
one after the other in the same run; accuracy is measured against fp32 at that length.
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
CHUNK_SECONDS = 7.0  # the random-weight models' chunk; a checkpoint's is its segment_seconds


def build_model(size: str, checkpoint: str | None = None, whisper_input: str | None = None):
    from moodstream.model import ModelConfig, ScreeningModel

    torch.manual_seed(0)
    if checkpoint:
        model = ScreeningModel.from_pretrained(checkpoint).eval()
        if whisper_input is not None and whisper_input != model.config.whisper_input:
            model = model.with_whisper_input(whisper_input)
        return model.to("cuda") if torch.cuda.is_available() else model
    if whisper_input is not None:
        raise ValueError("--whisper-input needs a Whisper --checkpoint")
    if size == "tiny":
        config = ModelConfig.tiny()
    else:
        config = ModelConfig(backbone="wav2vec2-base-shape", backbone_config={"model_type": "wav2vec2"})
    model = ScreeningModel(config).eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model


def speech_like_chunks(count: int, seed: int = 0, seconds: float = CHUNK_SECONDS) -> list[np.ndarray]:
    from moodstream.server.encoder_tuning import speech_like_waves

    return speech_like_waves(count, seed=seed, seconds=seconds, sample_rate=SAMPLE_RATE)


SHORT_BATCH = 4


def variants(model, want_compile: bool, log=print) -> dict:
    """name -> (encode(list of waves) -> vectors, note), each precision as the server runs it; a path that does
    not apply to this model or machine is left out, with the reason logged."""
    from moodstream.server.encoder_paths import check_request, cpu_has_fast_bf16, encode_function

    def tensor_output(encode):
        return lambda waves: torch.from_numpy(encode(waves))

    found = {"fp32": (model.encode_segments, "eager")}
    front_end = "bf16 CNN" if cpu_has_fast_bf16() and not model.backbone.is_whisper else ""
    wanted = [("bf16 autocast", "bf16", "")]
    if model.device.type == "cuda":
        wanted.append(("fp16 autocast", "fp16", ""))
    else:
        wanted.append(("int8 dynamic", "int8", "Linear layers" + (f", {front_end}" if front_end else "")))
    wanted += [("ort-fp32", "ort-fp32", "ONNX Runtime, basic graph optimisations"),
               ("ort-int8", "ort-int8", "ONNX Runtime, int8 MatMul weights")]
    for name, precision, note in wanted:
        try:
            check_request(model, precision)
            found[name] = (tensor_output(encode_function(model, precision)), note)
        except (ValueError, ImportError) as error:
            log(f"encoder: {name} left out: {error}")
    if want_compile:
        compiled = copy.deepcopy(model)
        compiled.backbone = torch.compile(compiled.backbone, dynamic=True)
        found["fp32 compile"] = (compiled.encode_segments, "torch.compile")
    return found


def interleaved(calls: dict, rounds: int) -> dict:
    """name -> (best seconds, peak memory MB) over `rounds`, the calls taking turns each round after one
    warm-up round: on a shared machine load swings hit every variant alike instead of one."""
    best = {name: float("inf") for name in calls}
    peak = {name: None for name in calls}
    cuda = torch.cuda.is_available()
    for round_index in range(rounds + 1):
        for name, call in calls.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            reset_peak_rss()
            started = time.perf_counter()
            call()
            if cuda:
                torch.cuda.synchronize()
            if round_index:
                best[name] = min(best[name], time.perf_counter() - started)
            memory = (torch.cuda.max_memory_allocated() / 2**20) if cuda else peak_rss_mb()
            peak[name] = memory if peak[name] is None else max(peak[name], memory)
    return {name: (best[name], peak[name]) for name in calls}


class ServerPath:
    """The server's BatchingEncoder (auto: it measures its own precision and max batch at start) on its own
    event loop, so that encoding every chunk at once can take turns with the other variants."""

    def __init__(self, model, waves: list[np.ndarray], max_batch: int | None, precision: str = "auto") -> None:
        from moodstream.server.encoder import BatchingEncoder

        self.waves = waves
        self.loop = asyncio.new_event_loop()
        self.encoder = BatchingEncoder(model, max_batch=max_batch, max_wait_ms=5.0, precision=precision,
                                       tuning_cache=None)
        self.loop.run_until_complete(self.encoder.start())

    def encode_all(self, waves: list[np.ndarray] | None = None) -> np.ndarray:
        async def gather():
            return await asyncio.gather(*(self.encoder.encode(wave) for wave in waves or self.waves))
        return np.stack(self.loop.run_until_complete(gather()))

    def close(self) -> None:
        self.loop.run_until_complete(self.encoder.stop())
        self.loop.close()


def accuracy(model, references: list[torch.Tensor], outputs: list[torch.Tensor]) -> dict:
    """The server's accuracy measure over sessions (the probe chunks, then the bundled interviews)."""
    from moodstream.server.encoder_tuning import worst_accuracy

    cosine, probability_error = worst_accuracy(model, [r.cpu().numpy() for r in references],
                                               [v.cpu().numpy() for v in outputs])
    return {"max_abs_diff_vector": max(float((v - r).abs().max()) for r, v in zip(references, outputs)),
            "min_cosine": cosine, "abs_diff_probability": probability_error}


def run(size: str = "base", batch_sizes=(1, 2, 4, 8, 16, 32), rounds: int = 2, want_compile: bool = False,
        server_max_batch: int | None = None, log=print, checkpoint: str | None = None,
        whisper_input: str | None = None, only: tuple[str, ...] | None = None,
        server_precision: str = "auto") -> dict:
    from moodstream.server.encoder_tuning import interview_probe, within_bound

    model = build_model(size, checkpoint, whisper_input)
    chunk_seconds = model.config.segment_seconds
    waves = speech_like_chunks(max(batch_sizes), seconds=chunk_seconds)
    if model.backbone.is_whisper:
        size = f"{'checkpoint' if checkpoint else size} whisper {model.config.whisper_input}"
    found = variants(model, want_compile, log)
    if only:  # a dry run's short list: fp32, the baseline, always stays
        found = {name: variant for name, variant in found.items() if name == "fp32" or name in only}
    # Accuracy as the server's tuner measures it: every score after each segment, on the probe chunks and on
    # the first chunks of the bundled interviews (real speech).
    sessions = [waves[:4], *interview_probe(model)]
    references = [model.encode_segments(session) for session in sessions]
    quality = {name: accuracy(model, references, [encode(session) for session in sessions])
               for name, (encode, _) in found.items()}
    # Every (variant, batch) up to 4, and the server path, take turns in one loop, so that the server path's
    # share of the best variant compares runs made under the same load. Long batches take tens of seconds on
    # a CPU: each gets its own group and one timed round.
    short_batches = [batch for batch in batch_sizes if batch <= SHORT_BATCH]
    long_batches = [batch for batch in batch_sizes if batch > SHORT_BATCH]
    server_batch = max(short_batches or batch_sizes)
    server = ServerPath(model, waves[:server_batch], server_max_batch, server_precision)
    log(f"encoder {size} server path: {server.encoder.tuning.summary()}")
    try:
        quality["server path"] = accuracy(model, references,
                                          [torch.from_numpy(server.encode_all(session)) for session in sessions])

        def calls_at(batches):
            return {(name, batch): (lambda encode=encode, batch=batch: encode(waves[:batch]))
                    for batch in batches for name, (encode, _) in found.items()}

        groups = [(calls_at(short_batches), rounds)] if short_batches else []
        groups += [(calls_at([batch]), 1) for batch in long_batches]
        groups[0][0]["server path", server_batch] = server.encode_all
        timings = {}
        for calls, group_rounds in groups:
            timings.update(interleaved(calls, group_rounds))
    finally:
        server.close()
    baseline = 1 / timings["fp32", batch_sizes[0]][0] if batch_sizes[0] == 1 else None
    baseline = baseline or min(batch_sizes) / timings["fp32", min(batch_sizes)][0]
    rows = []
    notes = {name: note for name, (_, note) in found.items()}
    notes["server path"] = f"{server.encoder.precision}, max batch {server.encoder.max_batch}"
    for (name, batch), (seconds, peak) in sorted(timings.items(), key=lambda item: item[0][1]):
        chunks_per_second = batch / seconds
        rows.append({"variant": name, "note": notes[name], "batch": batch, "seconds": seconds,
                     "chunks_per_second": chunks_per_second, "real_time_factor": seconds / (batch * chunk_seconds),
                     "peak_memory_mb": None if name == "server path" else peak, **quality[name],
                     "speedup_vs_naive": chunks_per_second / baseline})
        log(f"encoder {size} {name:14s} batch {batch:2d}: {chunks_per_second:.2f} chunks/s "
            f"({rows[-1]['speedup_vs_naive']:.2f}x naive)")
    rows.sort(key=lambda r: (r["variant"] == "server path", list(found).index(r["variant"])
                             if r["variant"] in found else 0, r["batch"]))
    served = rows[-1]
    # The best variant a server could have run: within the bound, at any measured batch size.
    eligible = [r for r in rows[:-1] if within_bound(r["min_cosine"], r["abs_diff_probability"])]
    best = max(eligible, key=lambda r: r["chunks_per_second"])
    server_share = served["chunks_per_second"] / best["chunks_per_second"]
    log(f"encoder {size} server path ({served['note']}): {served['chunks_per_second']:.2f} chunks/s "
        f"({rows[-1]['speedup_vs_naive']:.2f}x naive, {server_share:.0%} of the best variant "
        f"{best['variant']} batch {best['batch']})")
    return {"size": "checkpoint" if checkpoint else size, "checkpoint": checkpoint, "chunk_seconds": chunk_seconds,
            "whisper_input": model.config.whisper_input if model.backbone.is_whisper else None,
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
    parser.add_argument("--whisper-input", nargs="+", choices=("30s", "chunk"),
                        help="a Whisper checkpoint at these input lengths, one after the other (default: its own)")
    args = parser.parse_args()
    if args.whisper_input and not args.checkpoint:
        parser.error("--whisper-input needs a Whisper --checkpoint")
    results = [{"machine": machine(), **run(args.size, args.batch_sizes, args.rounds, args.compile,
                                            log=lambda line: print(line, file=sys.stderr), checkpoint=args.checkpoint,
                                            whisper_input=whisper_input)}
               for whisper_input in args.whisper_input or [None]]
    print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    for result in results:
        if len(results) > 1:
            print(f"\n### Whisper input {result['whisper_input']}: naive {result['naive_chunks_per_second']:.2f} chunks/s\n")
        print(table(result))


if __name__ == "__main__":
    main()
