"""`moodstream demo --dashboard`: the real demo process serves the dashboard on its session."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.slow


def test_demo_dashboard_opens_on_the_demo_session_and_stops_on_sigterm(tmp_path):
    command = [sys.executable, "-P", "-m", "moodstream.cli", "demo", "--speed", "0", "--dashboard",
               "--dashboard-port", "0", "--session", "demo-dash"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any("dashboard: still serving" in line for line in lines):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        output = "".join(lines)
        session_url = re.search(r"dashboard: open (http://127\.0\.0\.1:\d+/s/([0-9a-f]{20}))", output)
        assert session_url, output
        assert "demo-dash" not in session_url.group(1)
        page = httpx.get(session_url.group(1), timeout=10)
        assert page.status_code == 200 and "not a diagnosis" in page.text
        root = session_url.group(1).split("/s/")[0]
        detail = httpx.get(f"{root}/api/s/{session_url.group(2)}", timeout=10).json()
        printed = re.findall(r"slowed-delivery segment +(\d+) \|", output)
        assert printed and len(detail["points"]) == int(printed[-1])
        assert detail["session"]["session_id"] == "demo-dash"
        assert re.search(r"model ([A-Za-z0-9_.+-]+)", output).group(1) == detail["session"]["model_version"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        reader.join(5)
    assert code == 0, "".join(lines)
    assert "summary:" in "".join(lines)
