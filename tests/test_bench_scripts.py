"""The benchmark scripts' own promises: the GPU check's no-GPU answer, a clean Redis MONITOR shutdown."""
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_the_gpu_check_says_there_is_no_gpu_and_exits_0(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from gpu import nvidia_gpus

    if torch.cuda.is_available() or nvidia_gpus():
        pytest.skip("a GPU is here: bench/gpu.py would run the whole check")
    done = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no NVIDIA GPU" in done.stdout and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_counting_redis_round_trips_stops_without_a_stray_thread_error(redis_url, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from loopback import RedisRoundTrips

    errors = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    counter = RedisRoundTrips(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        client.set("bench-key", 1)
        client.get("bench-key")
        deadline = time.monotonic() + 10
        while counter.by_command.get("GET", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.close()
    counts = counter.close()
    assert counts.get("SET") == 1 and counts.get("GET") == 1
    assert not counter.thread.is_alive() and not errors
