"""Retraining from the field, end to end: stream, export, label, retrain the session head, roll it out.

Real Redis, a real server on a model folder, the real `moodstream` commands, a real tiny model.
"""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import numpy as np
import pytest

from moodstream.model import ScreeningModel
from moodstream.trainer.from_export import read_labels
from server_harness import chunk, end, header, offline_score, stream, stub_for, tiny_model
from test_model_repository import info, models_server, set_current, wait_for

RATE = 16000
SECONDS = 2.0
CHUNKS = 3


def voice(low: bool, seed: int) -> list[bytes]:
    """Two kinds of speech-like audio a session head can tell apart: slow, low and quiet, or lively."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SECONDS * RATE)) / RATE
    chunks = []
    for _ in range(CHUNKS):
        pitch = rng.uniform(85, 110) if low else rng.uniform(200, 260)
        rate = rng.uniform(1.5, 2.5) if low else rng.uniform(5, 7)
        level = 0.08 if low else 0.3
        voiced = sum(np.sin(2 * np.pi * pitch * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
        wave = level * voiced * 0.5 * (1 + np.sin(2 * np.pi * rate * t)) + 0.005 * rng.standard_normal(t.size)
        chunks.append((np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes())
    return chunks


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "moodstream.compose.cli", *args], capture_output=True, text=True,
                          timeout=600)


def stream_session(port: int, tokens, session: str, participant: str, pcm: list[bytes]) -> list:
    with stub_for(port) as stub:
        requests = [header(session, participant)] + [chunk(s, c) for s, c in enumerate(pcm)] + [end(len(pcm) - 1)]
        responses = stream(stub, requests, tokens.metadata("admin"))
    return [r.score for r in responses if r.WhichOneof("message") == "score"]


def test_stream_export_label_retrain_roll_out_and_score_under_the_new_version(tmp_path, redis_url, tokens):
    base = tiny_model(0)
    models = tmp_path / "models"
    base.save_pretrained(models / "v1")
    participants = [f"p{i}" for i in range(1, 9)]   # the tokens' scope; p1-p4 low, p5-p8 lively
    low = {p: i < 4 for i, p in enumerate(participants)}
    with models_server(models, redis_url, tokens) as server:
        # 1. Sessions are streamed and scored under v1.
        for round_ in range(3):
            for index, participant in enumerate(participants):
                scores = stream_session(server.port, tokens, f"{participant}-s{round_}", participant,
                                        voice(low[participant], seed=100 * round_ + index))
                assert {s.model_version for s in scores} == {base.model_version}

        # 2. Export, and 3. the PHQ-8 answers collected later.
        export = tmp_path / "export"
        done = cli("export", "--redis", redis_url, str(export))
        assert done.returncode == 0, done.stderr
        labels = tmp_path / "phq8.csv"
        with open(labels, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["participant_id", "phq8_score"])
            writer.writerows([(p, 15 if low[p] else 3) for p in participants])
            writer.writerow(["p-never-recorded", 12])  # an answer whose participant never streamed

        # 4. The session head alone is retrained; the encoder stays byte for byte.
        run = tmp_path / "run"
        done = cli("train", "--from-export", str(export), "--labels", str(labels), "--base", str(models),
                   "--output", str(run), "--set", "data.folds=4", "--set", "run.tsne=false")
        assert done.returncode == 0, done.stderr
        assert "encoder of " + base.model_version in done.stdout
        assert "0 without a label left out" in done.stdout
        assert "1 label row id(s) matched no exported session or participant: p-never-recorded" in done.stdout
        retrained = ScreeningModel.from_pretrained(run / "checkpoint")
        assert retrained.model_version != base.model_version
        assert (run / "checkpoint" / "encoder.safetensors").read_bytes() == \
            (models / "v1" / "encoder.safetensors").read_bytes()
        assert (run / "report.md").is_file()

        # `evaluate` reads an export too.
        done = cli("evaluate", str(run / "checkpoint"), str(export), "--labels", str(labels), "--output",
                   str(tmp_path / "evaluation"))
        assert done.returncode == 0, done.stderr
        assert "export: session" in done.stdout

        # 5. Rolled out without a restart: the new version shares the loaded encoder.
        shutil.copytree(run / "checkpoint", models / ".v2")
        (models / ".v2").rename(models / "v2")
        with stub_for(server.port) as stub:
            wait_for(lambda: retrained.model_version in [v.model_version for v in info(stub, tokens).versions],
                     "the retrained version to load")
            set_current(models, "v2")
            wait_for(lambda: info(stub, tokens).model_version == retrained.model_version, "the switch")
        repository = server.server.repository
        assert repository.get(retrained.model_version).encoder is repository.get(base.model_version).encoder

        # 6. The next sessions score under it, exactly as the checkpoint does offline, and it tells the two apart.
        finals = {}
        for index, participant in enumerate(participants):
            pcm = voice(low[participant], seed=900 + index)
            scores = stream_session(server.port, tokens, f"{participant}-next", participant, pcm)
            assert {s.model_version for s in scores} == {retrained.model_version}
            assert scores[-1].probability == pytest.approx(offline_score(retrained, pcm), abs=1e-4)
            finals[participant] = scores[-1].probability
        assert min(finals[p] for p in participants if low[p]) > max(finals[p] for p in participants if not low[p])


def test_retraining_refuses_vectors_of_another_encoder_and_bad_labels(tmp_path, redis_url, tokens):
    base, other = tiny_model(0), tiny_model(5)
    models = tmp_path / "models"
    base.save_pretrained(models / "v1")
    other.save_pretrained(tmp_path / "other")
    with models_server(models, redis_url, tokens) as server:
        for index, participant in enumerate(("p1", "p2", "p3", "p4")):
            stream_session(server.port, tokens, f"{participant}-s", participant, voice(index < 2, seed=index))
    export = tmp_path / "export"
    assert cli("export", "--redis", redis_url, str(export)).returncode == 0
    labels = tmp_path / "labels.csv"
    labels.write_text("session_id,label\np1-s,1\np2-s,1\np3-s,0\np4-s,0\n")
    done = cli("train", "--from-export", str(export), "--labels", str(labels), "--base", str(tmp_path / "other"),
               "--output", str(tmp_path / "run"))
    assert done.returncode != 0
    assert f"were encoded by model {base.model_version}, not by the base checkpoint's model" in done.stderr
    assert not (tmp_path / "run").exists()
    done = cli("train", "--from-export", str(export), "--labels", str(labels), "--output", str(tmp_path / "run"))
    assert done.returncode != 0 and "--from-export needs --labels, --base and --output" in done.stderr

    bad = tmp_path / "bad.csv"
    for text, words in (("participant_id,phq8_score\np1,31\n", "a PHQ-8 score is 0-24"),
                        ("participant_id,label\np1,2\n", "label must be 0 or 1"),
                        ("who,what\np1,1\n", "needs a session_id or participant_id column")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=words):
            read_labels(bad, 10.0)
    bad.write_text("session_id,phq8_score\nsomeone-else,12\n")
    done = cli("train", "--from-export", str(export), "--labels", str(bad), "--base", str(models / "v1"),
               "--output", str(tmp_path / "run"))
    assert done.returncode != 0 and "has a label in" in done.stderr


def test_the_sessions_a_retraining_left_out_are_said_in_one_line():
    from moodstream.trainer.cli import left_out_text

    text = left_out_text({"export_sessions": 10, "unlabelled": 3, "without_segments": 1,
                          "labels_without_session": ["a", "b"], "labels_without_session_count": 25})
    assert text.startswith("sessions: 6 of 10 exported used; 3 without a label left out; 1 without segments")
    assert "25 label row id(s) matched no exported session or participant: a, b …" in text
    assert "\n" not in text
