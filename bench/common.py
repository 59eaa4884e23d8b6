"""What every benchmark shares: the machine it ran on, timing, peak memory, tables.

Machines here are shared and noisy, so every figure is reported as a ratio
to a baseline measured in the same run, and timings interleave the variants
being compared (A, B, A, B, ...) and keep each one's best round.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_cores_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": os.getloadavg()[0],
    }
    return info


def machine_line(info: dict) -> str:
    """The machine a report's figures were measured on, in one line (info: machine())."""
    return (f"{info['cpu']}, {info['cpu_cores_usable']} usable cores, torch {info['torch']} "
            f"({info['torch_cpu_capability']}, {info['torch_threads']} threads), GPU: {info['cuda'] or 'none'}; "
            f"load average at start {info['load_average_at_start']:.1f}")


def interleaved_best(variants: dict[str, Callable[[], object]], rounds: int = 3,
                     warmup: int = 1) -> dict[str, float]:
    """Best wall time of each variant over `rounds`, the variants taking turns each round."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


# Peak resident memory of this process between two points: Linux lets a process
# reset its own high-water mark (clear_refs 5), so each variant gets its own peak.
def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mb(pid: int | str, field: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_mb(pid: int | str = "self") -> float | None:
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int | str = "self") -> float | None:
    return _status_mb(pid, "VmRSS")


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds a process has used (from /proc, so it works for any pid)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            if value != value:
                return "–"
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def bench_main(description: str, run: Callable[..., dict], report: Callable[[dict], str],
               options: dict[str, int | tuple]) -> None:
    """One benchmark's command line: its options (name: default, or (default, what it is), or (default, what it
    is, the choices)), each of its default's type, passed to `run` in order, progress on stderr, `--out FILE`
    for the results as JSON, and the report on stdout."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, option in options.items():
        default, what, choices = (*option, None)[:3] if isinstance(option, tuple) else (option, "", None)
        parser.add_argument(f"--{name}", type=type(default), default=default, choices=choices,
                            help=f"{what} (default: %(default)s)" if what else "(default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    values = [getattr(args, name.replace("-", "_")) for name in options]
    results = run(*values, log=lambda message: print(message, file=sys.stderr))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(report(results))


def stop_process(process: subprocess.Popen, grace: float) -> None:
    """Ask a child process to end, and kill it if it has not within `grace` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
