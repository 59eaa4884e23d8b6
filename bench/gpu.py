"""GPU check: what one NVIDIA GPU does for moodstream, in under five minutes.

    python bench/gpu.py [--out bench/results] [--agents 32] [--max-speed 512]

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

Writes gpu.json and gpu.md to --out. Where no GPU is present it says so and
exits 0; where a GPU is present but torch was built without CUDA it says what
to install and exits 2.
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
    parts = [f"# moodstream GPU check, {result['date']}", "",
             f"GPU: {info['cuda']}; CPU: {info['cpu']}, {info['cpu_cores_usable']} usable cores; torch "
             f"{info['torch']}. Run: `python bench/gpu.py` ({result['wall_minutes']:.1f} min).", ""]
    if "encoder" in result:
        enc = result["encoder"]
        parts += [f"## Encoder, base size, 7 s chunks (naive fp32 one chunk at a time: "
                  f"{enc['naive_chunks_per_second']:.1f} chunks/s; server path "
                  f"{enc['server_path_share_of_best']:.0%} of the best variant)", "", encoder.table(enc), ""]
    if "loopback" in result:
        loop = result["loopback"]
        parts += [f"## Loopback, base size, {loop['agents']} agents, p95 limit {P95_LIMIT_S:g} s: kept up to "
                  f"{loop['ceiling_realtime_agents']:g} real-time agents; GPU memory in use at most "
                  f"{result.get('loopback_gpu_memory_peak_mib') or '?'} MiB (nvidia-smi)", "",
                  loopback.table(loop), ""]
    if result.get("errors"):
        parts += ["## Errors", "", *(f"- {error}" for error in result["errors"]), ""]
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="folder for gpu.json and gpu.md")
    parser.add_argument("--agents", type=int, default=32, help="simulated agents in the loopback run")
    parser.add_argument("--max-speed", type=float, default=512.0, help="stop doubling the loopback's pace here")
    args = parser.parse_args()

    import torch

    gpus = nvidia_gpus()
    if not torch.cuda.is_available():
        if gpus:
            print(f"gpu check: {gpus[0]} is present, but this torch ({torch.__version__}) has no CUDA support; "
                  "install a CUDA build of torch into the environment (pip install torch from PyPI on Linux "
                  "bundles CUDA) and run again", file=sys.stderr)
            return 2
        print("gpu check: no NVIDIA GPU on this machine (no nvidia-smi GPU, torch.cuda unavailable): nothing "
              "measured. Run it on a machine with one NVIDIA GPU.")
        return 0

    import datetime

    import encoder
    import loopback

    started = time.perf_counter()
    result: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": machine(), "errors": []}
    args.out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {line}", file=sys.stderr, flush=True)

    def save() -> None:
        # After each part, so a run cut short keeps what it measured.
        result["wall_minutes"] = (time.perf_counter() - started) / 60
        (args.out / "gpu.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (args.out / "gpu.md").write_text(markdown(result) + "\n")

    try:
        result["encoder"] = encoder.run("base", BATCH_SIZES, rounds=3, log=log)
    except Exception as error:  # keep going: the loopback still says something
        result["errors"].append(f"encoder: {error!r}")
    save()
    torch.cuda.empty_cache()
    try:
        with GpuMemorySampler() as sampler:
            result["loopback"] = loopback.run("base", agents=args.agents, chunks_per_agent=3,
                                              max_speed=args.max_speed, log=log, p95_limit_s=P95_LIMIT_S)
        result["loopback_gpu_memory_peak_mib"] = sampler.peak_mib
    except Exception as error:
        result["errors"].append(f"loopback: {error!r}")
    save()
    print(markdown(result))
    print(f"\nwritten: {args.out / 'gpu.json'}, {args.out / 'gpu.md'}", file=sys.stderr)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
