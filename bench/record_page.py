"""CPU use of the /record page while it records, in headless Chromium on this machine.

    python bench/record_page.py [--seconds 20] [--out FILE]

A real `moodstream server` (with its gRPC-web port), Redis and `moodstream dashboard` serve the page;
Chromium records a speech-like WAV through its fake microphone. Measured: CPU seconds of all of
Chromium's processes (browser, renderer, audio, GPU, network service) over --seconds,

* baseline, in the same run: the page open and idle (loaded, not recording);
* recording: capture, AudioWorklet, VAD, chunking, the IndexedDB outbox and PutChunk calls.

Reported as a share of one core, and the recording's ratio to the idle page.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from common import cpu_seconds, machine, markdown_table  # noqa: E402
from encoder import build_model  # noqa: E402
from loopback import pcm_chunks  # noqa: E402
from put_chunk import WebServer  # noqa: E402

RATE = 16000


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu(pid: int) -> float:
    total = 0.0
    for process in descendants(pid):
        try:
            total += cpu_seconds(process)
        except OSError:
            pass
    return total


def interview_wav(path: Path, seconds: float) -> None:
    import soundfile

    speech = np.concatenate([np.frombuffer(c, "<i2") for c in pcm_chunks(int(seconds // 7) + 1)])
    pause = np.zeros(RATE, np.int16)
    parts, at = [], 0
    while at < len(speech):  # 5 s of speech, 1 s of silence
        parts += [speech[at:at + 5 * RATE], pause]
        at += 5 * RATE
    soundfile.write(path, np.concatenate(parts)[:int(seconds * RATE)], RATE, subtype="PCM_16")


def run(seconds: float = 20.0, log=print) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from moodstream.record_link import record_link
    from moodstream.server.auth import add_enrolment, create_token
    from moodstream.compose.redis_process import RedisProcess, free_port

    os.environ.setdefault("SE_OFFLINE", "true")
    with tempfile.TemporaryDirectory() as tmp, RedisProcess().start() as redis_server:
        tmp = Path(tmp)
        checkpoint = build_model("tiny").save_pretrained(tmp / "checkpoint")
        tokens = tmp / "tokens.json"
        stream_token = create_token(tokens, "phone", ["p1"], [])
        read_token = create_token(tokens, "dashboard", [], ["p1"])
        code, _ = add_enrolment(tokens, "phone", stream_token, "p1", 3600)  # before the server reads the file
        wav = tmp / "speech.wav"
        interview_wav(wav, 2 * seconds + 10)
        server = WebServer(checkpoint, redis_server.url, tokens)
        port = free_port()
        dashboard = subprocess.Popen(
            [sys.executable, "-m", "moodstream.compose.cli", "dashboard", "--server", f"127.0.0.1:{server.port}",
             "--token", read_token, "--participant", "p1", "--port", str(port), "--no-access-log",
             "--log-level", "warning", "--record-endpoint", f"http://127.0.0.1:{server.web_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                     f"--user-data-dir={tmp / 'profile'}", "--use-fake-ui-for-media-stream",
                     "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}%noloop"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
        try:
            url = record_link(f"http://127.0.0.1:{port}/record", code)
            for _ in range(100):
                try:
                    driver.get(url)
                    break
                except Exception:
                    time.sleep(0.2)
            for _ in range(300):
                if driver.execute_script("return document.body.dataset.ready") == "1":
                    break
                time.sleep(0.1)
            browser = driver.service.process.pid
            time.sleep(2)
            log(f"idle page, {seconds:g} s")
            before = tree_cpu(browser)
            time.sleep(seconds)
            idle = tree_cpu(browser) - before
            driver.find_element("id", "start").click()
            time.sleep(2)
            log(f"recording, {seconds:g} s")
            before = tree_cpu(browser)
            time.sleep(seconds)
            recording = tree_cpu(browser) - before
            sent = int(driver.find_element("id", "sent").text)
        finally:
            driver.quit()
            dashboard.terminate()
            dashboard.wait(10)
            server.close()
    return {"seconds": seconds, "idle_core_share": idle / seconds, "recording_core_share": recording / seconds,
            "ratio": recording / idle if idle else None, "chunks_sent": sent, "machine": machine()}


def report(results: dict) -> str:
    rows = [["page open, idle (baseline)", f"{100 * results['idle_core_share']:.1f} %", "1.00x"],
            ["recording", f"{100 * results['recording_core_share']:.1f} %",
             f"{results['ratio']:.2f}x" if results["ratio"] else "-"]]
    return markdown_table([f"headless Chromium, {results['seconds']:g} s each", "CPU (share of one core)",
                           "ratio to idle"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    results = run(args.seconds, log=lambda m: print(m, file=sys.stderr))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(report(results))
    print(f"chunks sent while recording: {results['chunks_sent']}", file=sys.stderr)


if __name__ == "__main__":
    main()
