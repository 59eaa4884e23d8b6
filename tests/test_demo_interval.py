"""`moodstream demo` prints each score with its interval when the checkpoint carries one, and says once that
the model gives none when it does not; --json carries the interval's fields either way."""
import json
import re

import numpy as np
import pytest
import soundfile
import torch

from moodstream.compose.cli import main
from moodstream.model import ModelConfig, ScreeningModel
from moodstream.wire import NO_INTERVAL_NOTE
from test_agent_signals import RATE, quiet, speech_like

REPLICATES = [[0.6, 1.4, -0.2], [0.9, 1.1, 0.1], [0.3, 1.8, 0.0], [1.2, 0.7, -0.4], [0.5, 1.0, 0.3]]
SCORE_LINE = re.compile(r"demo-participant segment +(\d+) \| +[\d.]+ s speech \| p = (\d\.\d\d)"
                        r"(?: \((\d\.\d\d)\u2013(\d\.\d\d)\))? \| .+ \| model (m[0-9a-f]+)$")
INTERVAL_NOTE = "in brackets: the 90% interval around each probability"


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    audio = np.concatenate([quiet(0.5, seed=1), speech_like(8.0, seed=2), quiet(2.0, seed=3),
                            speech_like(8.0, seed=4)])
    path = tmp_path_factory.mktemp("recording") / "answers.wav"
    soundfile.write(path, audio, RATE, subtype="PCM_16")
    return path


def checkpoint(folder, **config):
    torch.manual_seed(6)
    return ScreeningModel(ModelConfig.tiny(**config)).save_pretrained(folder)


def run_demo(capsys, folder, recording, *options) -> tuple[str, str]:
    assert main(["demo", "--checkpoint", str(folder), "--audio", str(recording), "--speed", "0", *options]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.mark.parametrize("replicates", [REPLICATES, []], ids=["with-interval", "without"])
def test_the_demo_prints_the_interval_or_says_once_that_there_is_none(capsys, tmp_path, recording, replicates):
    folder = checkpoint(tmp_path / "model", calibration_replicates=replicates)
    out, _ = run_demo(capsys, folder, recording)
    lines = [SCORE_LINE.search(line) for line in out.splitlines()]
    scores = [match for match in lines if match]
    assert len(scores) >= 2
    (version,) = {match.group(5) for match in scores}
    if replicates:
        assert all(match.group(3) is not None and float(match.group(3)) <= float(match.group(2)) <= float(match.group(4))
                   for match in scores)
        assert out.count(f"model {version}: {INTERVAL_NOTE}") == 1 and NO_INTERVAL_NOTE not in out
    else:
        assert all(match.group(3) is None for match in scores)
        assert out.count(f"model {version}: {NO_INTERVAL_NOTE}") == 1 and INTERVAL_NOTE not in out
    # said before the first score, not among the scores
    first_score = next(index for index, match in enumerate(lines) if match)
    assert any("interval" in line for line in out.splitlines()[:first_score])


def test_the_json_stream_carries_the_interval_and_the_note_goes_to_stderr(capsys, tmp_path, recording):
    folder = checkpoint(tmp_path / "model", calibration_replicates=REPLICATES)
    out, err = run_demo(capsys, folder, recording, "--json")
    updates = [json.loads(line) for line in out.splitlines()]
    assert len(updates) >= 2
    for update in updates:
        assert update["probability_low"] <= update["probability"] <= update["probability_high"]
        assert update["interval_level"] == pytest.approx(0.9)
    assert err.count(INTERVAL_NOTE) == 1
