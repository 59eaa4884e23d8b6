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

from moodstream.dashboard.feed import FeedConfig
from moodstream.dashboard.server import BackgroundDashboard
from moodstream.samples import DEMO_CHECKPOINT
from moodstream.model import ScreeningModel
from moodstream.model_description import ModelDescription
from waiting import wait_for

pytestmark = pytest.mark.slow


def test_demo_dashboard_opens_on_the_demo_session_lets_a_second_viewer_join_and_stops_cleanly_on_ctrl_c(tmp_path):
    command = [sys.executable, "-P", "-m", "moodstream.compose.cli", "demo", "--speed", "0", "--dashboard",
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
        assert detail["session"]["model"]["demo_model"] and "synthetic" in detail["session"]["model"]["flag"]
        threshold = ScreeningModel.from_pretrained(DEMO_CHECKPOINT).config.decision_threshold
        assert f"{threshold:.2f}" in output and detail["session"]["threshold"] == pytest.approx(threshold, abs=1e-6)

        # A second viewer joins with the read-only token and the command the demo printed.
        joined = re.search(r"a second viewer can run: MOODSTREAM_TOKEN=(\S+) moodstream dashboard --server (\S+) "
                           r"((?:--participant \S+ )+)--checkpoint (\S+) --port 0", output)
        assert joined, output
        token, server, options, checkpoint = joined.groups()
        participants = options.split()[1::2]
        assert participants == ["slowed-delivery", "lively-delivery"]
        assert (f"read-only token for this demo (it can read {', '.join(participants)} and nothing else): {token}"
                in output)
        config = FeedConfig(server=server, token=token, participants=participants,
                            models=[ModelDescription.from_checkpoint(checkpoint)])
        with BackgroundDashboard(config) as second:
            # the second viewer replays the session's updates from its feed: wait until it has all of them
            [first] = wait_for(lambda: [s for s in httpx.get(f"{second.url}api/overview", timeout=10).json()["sessions"]
                                        if s["session_id"] == "demo-dash" and s["segments"] == len(detail["points"])],
                               what="every score of the demo session on the second viewer", timeout=30)
            assert first["model"]["described"]
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        reader.join(5)
    output = "".join(lines)
    assert code == 0, output
    assert "summary:" in output
    assert "Traceback" not in output and "Event loop is closed" not in output, output
