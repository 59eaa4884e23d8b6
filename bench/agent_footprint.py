"""CPU time and peak memory of the edge agent for one hour of audio.

    python bench/agent_footprint.py [--minutes 60]

Builds an hour-long recording from the bundled interview, runs the real
`moodstream agent` process against a real server (tiny model) and Redis on
127.0.0.1, and reports the agent process's CPU seconds and peak RSS. The
baseline in the same run is the bare interpreter start with the agent's
imports, so the ratio shows what the work itself costs. Peak RSS is the
agent process's own high-water mark (VmHWM), polled while it runs.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, machine, markdown_table, peak_rss_mb  # noqa: E402


def child_usage(command: list[str]) -> dict:
    """Run a command as the only child since the last call; return its CPU and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # stderr goes to a file: a pipe nobody reads while the agent runs would fill and stall it.
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
        peak = 0.0
        while process.poll() is None:
            peak = max(peak, peak_rss_mb(process.pid) or 0.0)
            time.sleep(0.05)
        log.seek(0)
        stderr = log.read()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(f"{command[:4]} failed:\n{stderr[-2000:]}")
    return {"cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_rss_mb": peak, "wall_seconds": wall}


def run(minutes: float = 60.0, log=print) -> dict:
    from moodstream.model import ModelConfig, ScreeningModel
    from moodstream.server.app import BackgroundServer, ServerConfig
    from moodstream.compose.redis_process import RedisProcess

    sample, rate = soundfile.read(ROOT / "moodstream" / "assets" / "sample-interview.ogg", dtype="int16")
    repeats = int(np.ceil(minutes * 60 * rate / sample.size))
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "long-interview.flac"
        soundfile.write(audio, np.tile(sample, repeats)[: int(minutes * 60 * rate)], rate)
        baseline = child_usage([sys.executable, "-c", "import moodstream.agent.cli, moodstream.agent.pipeline"])
        with RedisProcess().start() as redis_server:
            config = ServerConfig(checkpoint="", redis_url=redis_server.url, port=0, allow_unauthenticated=True,
                                  precision="fp32")
            with BackgroundServer(config, ScreeningModel(ModelConfig.tiny())) as server:
                agent = child_usage([sys.executable, "-m", "moodstream.compose.cli", "agent", "--server",
                                     f"127.0.0.1:{server.port}", "--participant", "bench", "--outbox",
                                     str(Path(tmp) / "outbox"), "--speed", "0", str(audio)])
    hours = minutes / 60
    result = {
        "audio_minutes": minutes,
        "audio_format": f"FLAC {rate} Hz mono (the bundled interview, repeated)",
        "agent_cpu_seconds": agent["cpu_seconds"],
        "agent_cpu_seconds_per_audio_hour": agent["cpu_seconds"] / hours,
        "share_of_one_core_live": agent["cpu_seconds"] / (hours * 3600),
        "agent_peak_rss_mb": agent["peak_rss_mb"],
        "baseline_import_cpu_seconds": baseline["cpu_seconds"],
        "baseline_import_peak_rss_mb": baseline["peak_rss_mb"],
        "agent_cpu_ratio_to_import_baseline": agent["cpu_seconds"] / baseline["cpu_seconds"],
    }
    log(f"agent: {result['agent_cpu_seconds_per_audio_hour']:.2f} CPU s per audio hour "
        f"({100 * result['share_of_one_core_live']:.3f}% of one core), peak RSS {result['agent_peak_rss_mb']:.0f} MB")
    return result


def table(result: dict) -> str:
    return markdown_table(
        ["what", "agent (whole run)", "baseline: interpreter + agent imports"],
        [["CPU seconds", result["agent_cpu_seconds"], result["baseline_import_cpu_seconds"]],
         ["CPU seconds per hour of audio", result["agent_cpu_seconds_per_audio_hour"], None],
         ["share of one core, live audio", f"{100 * result['share_of_one_core_live']:.3f} %", None],
         ["peak RSS MB", result["agent_peak_rss_mb"], result["baseline_import_peak_rss_mb"]]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the recording to stream")
    args = parser.parse_args()
    result = {"machine": machine(), **run(args.minutes, log=lambda line: print(line, file=sys.stderr))}
    print(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
