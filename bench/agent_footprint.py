"""CPU time and peak memory of the edge agent for one hour of audio.

    python bench/agent_footprint.py [--minutes 60]

Builds an hour-long recording from the bundled interview, runs the real
`moodstream agent` process against a real server (tiny model) and Redis on
127.0.0.1, and reports the agent process's CPU seconds and peak RSS. The
baseline in the same run is the bare interpreter start (`python -c pass`
with the agent's imports), so the ratio shows what the work itself costs.
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a running process: its own peak, unlike RUSAGE_CHILDREN, which also counts
    the pages a fork shares with this (torch-sized) parent before exec."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def child_usage(command: list[str]) -> dict:
    """Run a command as the only child since the last call; return its CPU and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, peak_rss_mb(process.pid) or 0.0)
        time.sleep(0.05)
    stderr = process.stderr.read()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(f"{command[:4]} failed:\n{stderr[-2000:]}")
    return {"cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_rss_mb": peak, "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the recording to stream")
    args = parser.parse_args()

    from moodstream.server.app import BackgroundServer, ServerConfig
    from moodstream.server.redis_process import RedisProcess
    from moodstream.model import ModelConfig, ScreeningModel

    sample, rate = soundfile.read(ROOT / "moodstream" / "assets" / "sample-interview.ogg", dtype="int16")
    repeats = int(np.ceil(args.minutes * 60 * rate / sample.size))
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "hour.flac"
        soundfile.write(audio, np.tile(sample, repeats)[: int(args.minutes * 60 * rate)], rate)
        baseline = child_usage([sys.executable, "-c", "import moodstream.agent.cli, moodstream.agent.pipeline"])
        with RedisProcess().start() as redis_server:
            config = ServerConfig(checkpoint="", redis_url=redis_server.url, port=0, allow_unauthenticated=True,
                                  precision="fp32")
            with BackgroundServer(config, ScreeningModel(ModelConfig.tiny())) as server:
                agent = child_usage([sys.executable, "-m", "moodstream.cli", "agent", "--server",
                                     f"127.0.0.1:{server.port}", "--participant", "bench", "--outbox",
                                     str(Path(tmp) / "outbox"), "--speed", "0", str(audio)])
    hours = args.minutes / 60
    report = {
        "audio_minutes": args.minutes,
        "agent_cpu_seconds": round(agent["cpu_seconds"], 2),
        "agent_cpu_seconds_per_audio_hour": round(agent["cpu_seconds"] / hours, 2),
        "share_of_one_core_live": round(agent["cpu_seconds"] / (hours * 3600), 5),
        "agent_peak_rss_mb": round(agent["peak_rss_mb"], 1),
        "baseline_import_cpu_seconds": round(baseline["cpu_seconds"], 2),
        "agent_cpu_ratio_to_import_baseline": round(agent["cpu_seconds"] / baseline["cpu_seconds"], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
