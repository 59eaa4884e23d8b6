"""Retake docs/dashboard.md's picture from the real demo in headless Chromium.

    .venv/bin/python scripts/dashboard_screenshot.py            # writes docs/dashboard.png

Runs `moodstream demo --dashboard --speed 1.5`, waits until the session has
`--segments` scores, and saves the session page at 1280 x 900 (the demo is
then stopped with Ctrl-C, as a user would). Needs selenium and Debian's
chromium + chromium-driver, like the dashboard's browser test.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--speed", type=float, default=1.5)
    parser.add_argument("--segments", type=int, default=5)
    parser.add_argument("--size", default="1280x900", help="browser viewport, WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    demo = subprocess.Popen([sys.executable, "-m", "moodstream.compose.cli", "demo", "--dashboard", "--dashboard-port", "0",
                             "--speed", str(args.speed), "--session", "visit-2026-11-29"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(demo.stdout.readline, "")), daemon=True).start()
    profile = tempfile.mkdtemp(prefix="moodstream-chromium-")
    driver = None
    try:
        deadline = time.monotonic() + 300
        while not (found := re.search(r"dashboard: open (\S+)", "".join(lines))):
            if demo.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the demo did not start its dashboard:\n" + "".join(lines))
            time.sleep(0.2)
        os.environ.setdefault("SE_OFFLINE", "true")
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--lang=en-US",
                     f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                                  options=options)
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])  # the page itself gets the size
        driver.get(found.group(1))
        while int(driver.find_element("id", "chart").get_attribute("data-points")) < args.segments:
            if time.monotonic() > deadline:
                raise SystemExit("the session did not reach the segments asked for")
            time.sleep(0.2)
        time.sleep(0.5)  # the chart redraws after the last event
        args.output.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.output))
        print(f"wrote {args.output} ({width}x{height}, {args.segments} segments)")
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
