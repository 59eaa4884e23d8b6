"""GPU check: what one NVIDIA GPU does for moodstream, in under five minutes.

    python bench/gpu.py [--out bench/results] [--agents 32] [--max-speed 512]
                        [--checkpoint DIR [--whisper-input 30s chunk]] [--dry-run]

1. Encoder (base-size wav2vec2, random weights, 7 s chunks): chunks/s per
   precision (fp32, bf16 and fp16 autocast) and batch size (1, 4, 8, 16, 32),
   against naive fp32 one chunk at a time in the same run; each variant's
   accuracy against fp32; peak GPU memory per variant (torch's allocator);
   and the server's own encoder path with the (precision, max batch) it
   measures on this GPU.
2. Loopback: a real `moodstream server` process on the GPU and a real Redis
   (appendfsync always, as deploy/ runs it); N simulated agents stream at a
   pace doubled from real time until p95 chunk->score passes 1 s or a chunk
   is lost. The largest agents x pace that held is the number of live
   real-time agents one GPU serves within p95 < 1 s. The GPU memory in use
   (nvidia-smi, whole GPU) is sampled throughout.
3. With --checkpoint, both again for that checkpoint, with chunks of its own
   segment length (a Whisper checkpoint at each --whisper-input length: the
   same weights, ScreeningModel.with_whisper_input), where |Δp| is measured
   on trained weights; each row's server path and live agents are given as
   a ratio to the base-size row of the same run.

Writes gpu.json and gpu.md to --out. Where no GPU is present it says so and
exits 0; where a GPU is present but torch was built without CUDA it says what
to install and exits 2. --dry-run runs every part anyway (on the CPU where
there is no GPU) with the tiny random model instead of the base size, fp32
and bf16 at batch 1 and 2, two agents sending one chunk each at real-time
pace, and every server path at fp32, batch 1 (no start-up tuning): it shows
the script works end to end; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, markdown_table  # noqa: E402

BATCH_SIZES = (1, 4, 8, 16, 32)
P95_LIMIT_S = 1.0
DRY_RUN = {"size": "tiny", "batch_sizes": (1, 2), "rounds": 1, "paths": ("bf16 autocast",), "agents": 2,
           "max_speed": 1.0, "chunks_per_agent": 1, "precision": "fp32", "max_batch": 1}


def nvidia_gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in listed.stdout.splitlines() if line.startswith("GPU ")] if listed.returncode == 0 else []


class GpuMemorySampler:
    """Largest GPU memory in use (MiB, whole GPU 0, from nvidia-smi) while it runs."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "--id=0"], capture_output=True, text=True, timeout=10).stdout
                self.samples.append(float(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "GpuMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)

    @property
    def peak_mib(self) -> float | None:
        return max(self.samples) if self.samples else None


def markdown(result: dict) -> str:
    import encoder
    import loopback

    info = result["machine"]
    dry = " **Dry run: tiny limits, the numbers mean nothing.**" if result.get("dry_run") else ""
    parts = [f"# moodstream GPU check, {result['date']}", "",
             f"GPU: {info['cuda'] or 'none'}; CPU: {info['cpu']}, {info['cpu_cores_usable']} usable cores; torch "
             f"{info['torch']}. Run: `{result.get('command', 'python bench/gpu.py')}` "
             f"({result['wall_minutes']:.1f} min).{dry}", ""]
    encoders = [result["encoder"]] if "encoder" in result else []
    encoders += result.get("encoder_checkpoint", [])
    loops = [result["loopback"]] if "loopback" in result else []
    loops += result.get("loopback_checkpoint", [])
    if result.get("encoder_checkpoint") or result.get("loopback_checkpoint"):
        parts += ["## Each model against the random row of the same run", "", summary_table(encoders, loops), ""]
    for enc in encoders:
        parts += [f"## Encoder, {label(enc)}, {enc['chunk_seconds']:g} s chunks (naive fp32 one chunk at a time: "
                  f"{enc['naive_chunks_per_second']:.1f} chunks/s; server path "
                  f"{enc['server_path_share_of_best']:.0%} of the best variant)", "", encoder.table(enc), ""]
    for loop in loops:
        parts += [f"## Loopback, {loop['size']}, {loop['agents']} agents, p95 limit {P95_LIMIT_S:g} s: kept up to "
                  f"{loop['ceiling_realtime_agents']:g} real-time agents; GPU memory in use at most "
                  f"{loop.get('gpu_memory_peak_mib') or '?'} MiB (nvidia-smi)", "", loopback.table(loop), ""]
    if result.get("errors"):
        parts += ["## Errors", "", *(f"- {error}" for error in result["errors"]), ""]
    return "\n".join(parts)


def label(enc: dict) -> str:
    """An encoder row named as bench/loopback.py names the same model."""
    return f"{enc['size']}, Whisper input {enc['whisper_input']}" if enc.get("whisper_input") else enc["size"]


def summary_table(encoders: list[dict], loops: list[dict]) -> str:
    """Per model: the server path's chunks/s and the live agents it kept up with, each against the first row."""
    def served(enc: dict) -> dict:
        return next(row for row in enc["rows"] if row["variant"] == "server path")

    def ratio(value, base) -> str:
        return f"{value / base:.2f}×" if value is not None and base else "–"

    names = list(dict.fromkeys([label(e) for e in encoders] + [lp["size"] for lp in loops]))
    by_name = {name: ({label(e): e for e in encoders}.get(name), {lp["size"]: lp for lp in loops}.get(name))
               for name in names}
    base_enc, base_loop = by_name[names[0]]
    base_rate = served(base_enc)["chunks_per_second"] if base_enc else None
    base_agents = base_loop["ceiling_realtime_agents"] if base_loop else None
    rows = []
    for name, (enc, loop) in by_name.items():
        rate = served(enc)["chunks_per_second"] if enc else None
        agents = loop["ceiling_realtime_agents"] if loop else None
        rows.append([name, served(enc)["note"] if enc else None, rate, ratio(rate, base_rate),
                     max((r["abs_diff_probability"] for r in enc["rows"] if r["variant"] == "server path"),
                         default=None) if enc else None, agents, ratio(agents, base_agents)])
    return markdown_table(["model", "server path", "chunks/s", "vs first row", "|Δp| (server path)",
                           f"live agents, p95 < {P95_LIMIT_S:g} s", "vs first row"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="folder for gpu.json and gpu.md")
    parser.add_argument("--agents", type=int, default=32, help="simulated agents in the loopback run")
    parser.add_argument("--max-speed", type=float, default=512.0, help="stop doubling the loopback's pace here")
    parser.add_argument("--checkpoint", type=Path, help="also measure this checkpoint beside the base-size rows")
    parser.add_argument("--whisper-input", nargs="+", choices=("30s", "chunk"),
                        help="a Whisper --checkpoint at each of these input lengths (default: its own)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run every part with tiny limits, on the CPU where there is no GPU (numbers mean nothing)")
    args = parser.parse_args()
    if args.whisper_input and not args.checkpoint:
        parser.error("--whisper-input needs a Whisper --checkpoint")

    import torch

    gpus = nvidia_gpus()
    if not torch.cuda.is_available() and not args.dry_run:
        if gpus:
            print(f"gpu check: {gpus[0]} is present, but this torch ({torch.__version__}) has no CUDA support; "
                  "install a CUDA build of torch into the environment (pip install torch from PyPI on Linux "
                  "bundles CUDA) and run again", file=sys.stderr)
            return 2
        print("gpu check: no NVIDIA GPU on this machine (no nvidia-smi GPU, torch.cuda unavailable): nothing "
              "measured. Run it on a machine with one NVIDIA GPU (or try the script with --dry-run).")
        return 0

    import datetime
    import shlex

    import encoder
    import loopback

    limits = DRY_RUN if args.dry_run else {"size": "base", "batch_sizes": BATCH_SIZES, "rounds": 3, "paths": None,
                                           "agents": args.agents, "max_speed": args.max_speed,
                                           "chunks_per_agent": 3, "precision": None, "max_batch": None}
    started = time.perf_counter()
    result: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": machine(), "dry_run": args.dry_run,
                    "command": shlex.join(["python", "bench/gpu.py", *sys.argv[1:]]), "errors": []}
    args.out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {line}", file=sys.stderr, flush=True)

    def save() -> None:
        # After each part, so a run cut short keeps what it measured.
        result["wall_minutes"] = (time.perf_counter() - started) / 60
        (args.out / "gpu.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (args.out / "gpu.md").write_text(markdown(result) + "\n")

    # The random base-size row first, then the checkpoint at each input length: the same run, the same GPU.
    models = [(None, None)]
    if args.checkpoint:
        models += [(str(args.checkpoint), whisper_input) for whisper_input in args.whisper_input or [None]]
    for checkpoint, whisper_input in models:
        name = f"{checkpoint or limits['size']}{f' (Whisper input {whisper_input})' if whisper_input else ''}"
        try:
            measured = encoder.run(limits["size"], limits["batch_sizes"], rounds=limits["rounds"], log=log,
                                   checkpoint=checkpoint, whisper_input=whisper_input, only=limits["paths"],
                                   server_max_batch=limits["max_batch"],
                                   server_precision=limits["precision"] or "auto")
            if checkpoint:
                result.setdefault("encoder_checkpoint", []).append(measured)
            else:
                result["encoder"] = measured
        except Exception as error:  # keep going: the other parts still say something
            result["errors"].append(f"encoder {name}: {error!r}")
        save()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        try:
            with GpuMemorySampler() as sampler:
                measured = loopback.run(limits["size"], agents=limits["agents"],
                                        chunks_per_agent=limits["chunks_per_agent"], max_speed=limits["max_speed"],
                                        log=log, p95_limit_s=P95_LIMIT_S, checkpoint=checkpoint,
                                        whisper_input=whisper_input, precision=limits["precision"],
                                        max_batch=limits["max_batch"])
            measured["gpu_memory_peak_mib"] = sampler.peak_mib
            if checkpoint:
                result.setdefault("loopback_checkpoint", []).append(measured)
            else:
                result["loopback"] = measured
        except Exception as error:
            result["errors"].append(f"loopback {name}: {error!r}")
        save()
    print(markdown(result))
    print(f"\nwritten: {args.out / 'gpu.json'}, {args.out / 'gpu.md'}", file=sys.stderr)
    return 1 if result["errors"] else 0

if __name__ == "__main__":
    sys.exit(main())
