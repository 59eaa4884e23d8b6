"""The agent shows each score with its interval ("p = 0.72 (0.61–0.80)"), and says once, not on every line,
when the server's model gives none; its JSON events carry the interval's fields either way."""
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from moodstream.agent.cli import StatusLine
from moodstream.agent.client import ServerTarget, fetch_model_info
from moodstream.agent.events import AgentEvent
from moodstream.model import ModelConfig, ScreeningModel
from moodstream.wire import NO_INTERVAL_NOTE
from test_agent_signals import RATE, quiet, speech_like

REPLICATES = [[0.6, 1.4, -0.2], [0.9, 1.1, 0.1], [0.3, 1.8, 0.0], [1.2, 0.7, -0.4], [0.5, 1.0, 0.3]]
BRACKETED = re.compile(r"p = (\d\.\d\d) \((\d\.\d\d)\u2013(\d\.\d\d)\)")


def tiny(seed: int = 5, **config) -> ScreeningModel:
    torch.manual_seed(seed)
    return ScreeningModel(ModelConfig.tiny(**config)).eval()


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Three answers of speech, quiet between them: a few chunks to score."""
    audio = np.concatenate([quiet(0.5, seed=1), speech_like(8.0, seed=2), quiet(2.0, seed=3),
                            speech_like(8.0, seed=4), quiet(2.0, seed=5), speech_like(8.0, seed=6)])
    path = tmp_path_factory.mktemp("recording") / "answers.flac"
    soundfile.write(path, audio, RATE, format="FLAC")
    return path


def score_event(model_version: str, probability: float, **interval) -> AgentEvent:
    data = {"probability": probability, "segments": 1, "above_threshold": False, "evidence_sufficient": True,
            "model_version": model_version, "probability_low": None, "probability_high": None,
            "interval_level": None, **interval}
    return AgentEvent("score", "s1", data)


def test_the_status_line_brackets_the_interval_and_explains_it_once():
    stream = io.StringIO()
    status = StatusLine(stream, "s1")
    for probability in (0.7, 0.72):
        status.update(score_event("m1", probability, probability_low=0.61, probability_high=0.8, interval_level=0.9))
    lines = stream.getvalue().splitlines()
    assert lines.count("agent: model m1: in brackets: the 90% interval around each probability") == 1
    assert "p = 0.72 (0.61\u20130.80) after 1 segment(s), below threshold" in lines[-1]


def test_a_model_without_an_interval_is_said_once_per_model_not_on_every_line():
    stream = io.StringIO()
    status = StatusLine(stream, "s1")
    for version, probability in (("m1", 0.4), ("m1", 0.45), ("m1", 0.5), ("m2", 0.3)):
        status.update(score_event(version, probability))
    text = stream.getvalue()
    assert text.count(NO_INTERVAL_NOTE) == 2
    assert f"agent: model m1: {NO_INTERVAL_NOTE}" in text and f"agent: model m2: {NO_INTERVAL_NOTE}" in text
    score_lines = [line for line in text.splitlines() if "p = " in line]
    assert len(score_lines) == 4 and not any("(" in line.split("p = ")[1].split(" after")[0] for line in score_lines)
    assert "p = 0.30 after 1 segment(s)" in score_lines[-1]


def run_agent_cli(server, recording, session: str, tmp_path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "moodstream.compose.cli", "agent", "--server", f"127.0.0.1:{server.port}",
               "--token", server.tokens.by_name["agent"], "--participant", "p1", "--session", session,
               "--outbox", str(tmp_path / f"outbox-{session}"), "--json", "--max-retry-seconds", "30",
               str(recording)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def test_the_agent_shows_and_reports_the_interval_of_a_model_that_carries_one(start_server, recording, tmp_path):
    server = start_server(model=tiny(calibration_replicates=REPLICATES))
    info = fetch_model_info(ServerTarget(f"127.0.0.1:{server.port}", server.tokens.by_name["agent"]))
    assert info.interval_level == pytest.approx(0.9)
    result = run_agent_cli(server, recording, "with-interval", tmp_path)
    scores = [event for event in map(json.loads, result.stdout.splitlines()) if event["event"] == "score"]
    assert len(scores) >= 3
    for score in scores:
        assert score["probability_low"] <= score["probability"] <= score["probability_high"]
        assert score["interval_level"] == pytest.approx(0.9)
    shown = BRACKETED.findall(result.stderr)
    assert len(shown) >= len(scores) and all(float(low) <= float(p) <= float(high) for p, low, high in shown)
    last = scores[-1]
    final = (f"final probability {last['probability']:.2f} ({last['probability_low']:.2f}\u2013"
             f"{last['probability_high']:.2f}) after {last['segments']} segment(s)")
    assert final in result.stderr
    assert result.stderr.count("in brackets: the 90% interval around each probability") == 1
    assert NO_INTERVAL_NOTE not in result.stderr


def test_the_agent_says_once_that_a_model_gives_no_interval(start_server, recording, tmp_path):
    server = start_server(model=tiny())
    info = fetch_model_info(ServerTarget(f"127.0.0.1:{server.port}", server.tokens.by_name["agent"]))
    assert info.interval_level is None
    result = run_agent_cli(server, recording, "no-interval", tmp_path)
    scores = [event for event in map(json.loads, result.stdout.splitlines()) if event["event"] == "score"]
    assert len(scores) >= 3
    assert all(score[name] is None for score in scores
               for name in ("probability_low", "probability_high", "interval_level"))
    assert result.stderr.count(NO_INTERVAL_NOTE) == 1
    assert not BRACKETED.search(result.stderr)
    last = scores[-1]
    assert f"final probability {last['probability']:.2f} after {last['segments']} segment(s)" in result.stderr
