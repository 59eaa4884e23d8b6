"""The long-session check: held-out speakers, sessions as long as it says, and every reported number computed
from the score after exactly k segments, recomputed here from the audio through the speech path."""
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from moodstream.compose.cli import main
from moodstream.model import ScreeningModel
from moodstream.samples import DEMO_CHECKPOINT as DEMO_CHECKPOINT_FOLDER
from moodstream.trainer import demo_recipe
from moodstream.trainer.evaluate import checkpoint_speech
from moodstream.trainer.long_session_metrics import goal_verdict, reliability, row_at
from moodstream.trainer.long_sessions import (draw_speakers, generate_long_sessions, held_out_voices,
                                              run_long_session_check, training_corpus)
from moodstream.trainer.manifest import read_manifest
from moodstream.trainer.prefixes import expected_calibration_error, interval_coverage, sampled_coverage
from moodstream.trainer.segments import SegmentParams, session_audio, session_chunks

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (Debian: apt-get install -y espeak-ng; "
                                         "./run test installs it as root)")
AT = [1, 2, 3]
DEMO_CHECKPOINT = str(DEMO_CHECKPOINT_FOLDER)


@pytest.fixture(scope="module")
def checkpoint_with_interval(tmp_path_factory):
    """The demo checkpoint with interval replicates around its calibration, so coverage is computed."""
    model = ScreeningModel.from_pretrained(DEMO_CHECKPOINT_FOLDER)
    rng = np.random.default_rng(0)
    replicates = (np.array([1.0, 1.0, 0.0]) + rng.normal(0, [0.3, 0.3, 0.4], (40, 3))).tolist()
    model.config = model.config.replace(calibration_replicates=replicates)
    return model.save_pretrained(tmp_path_factory.mktemp("checkpoint") / "with-interval")


@pytest.fixture(scope="module")
def checked(checkpoint_with_interval, tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    folder = tmp_path_factory.mktemp("long-sessions")
    result = run_long_session_check(checkpoint_with_interval, folder / "report", speakers=3, seed=5, report_at=AT,
                                    cache_dir=folder / "cache", progress=False)
    return folder / "report", result


def test_the_speakers_are_outside_every_excluded_demo_corpus():
    trained = set(demo_recipe.corpus_speakers(np.random.default_rng(0)))
    pool = held_out_voices([0])
    assert pool and not trained & set(pool) and demo_recipe.DEMO_VOICE not in pool
    assert len(pool) == len(set(pool)) == 8 * 24 - 1 - demo_recipe.SPEAKERS
    also = set(demo_recipe.corpus_speakers(np.random.default_rng(7)))
    assert not (trained | also) & set(held_out_voices([0, 7]))
    assert draw_speakers(pool, 5, 1) == draw_speakers(pool, 5, 1) != draw_speakers(pool, 5, 2)
    larger = set(demo_recipe.corpus_speakers(np.random.default_rng(0), 96))
    assert len(held_out_voices([0], 96)) == 8 * 24 - 1 - 96 and not larger & set(held_out_voices([0], 96))


def test_the_check_leaves_out_the_corpus_size_a_checkpoint_records():
    model = ScreeningModel.from_pretrained(DEMO_CHECKPOINT_FOLDER)
    assert training_corpus(model)[:2] == (0, demo_recipe.SPEAKERS)  # built before the size was recorded
    model.config = model.config.replace(notes=model.config.notes | {"seed": 2, "corpus_speakers": 96})
    assert training_corpus(model)[:2] == (2, 96)
    model.config = model.config.replace(notes={"seed": 2})  # not a demo-recipe checkpoint
    assert training_corpus(model)[:2] == (0, demo_recipe.SPEAKERS)


def test_a_row_reads_the_kth_score_of_the_sessions_that_long():
    labels = [1, 0, 1, 0]
    prefixes = [np.array([0.6, 0.7, 0.9]), np.array([0.5, 0.2, 0.1]), np.array([0.4, 0.8]), np.array([0.3])]
    row = row_at(3, labels, prefixes, None)
    assert (row["sessions"], row["positives"], row["auc"]) == (2, 1, 1.0)
    assert row["mean_score_positive"] == 0.9 and row["mean_score_negative"] == 0.1
    assert row["brier"] == pytest.approx((0.1 ** 2 + 0.1 ** 2) / 2) and row["interval_coverage"] is None
    rows = {k: row_at(k, labels, prefixes, None) for k in (1, 2)}
    verdict = goal_verdict(rows, [2], 1)
    assert verdict["points"]["2"]["auc_gap"] == pytest.approx(abs(rows[2]["auc"] - rows[1]["auc"]))


def test_reliability_bins_are_the_eces():
    labels = np.array([0, 1, 1, 0, 1])
    scores = np.array([0.05, 0.07, 0.55, 0.58, 0.99])
    cells = reliability(labels, scores)
    assert [(c["bin"], c["sessions"], c["outcome_rate"]) for c in cells] == \
        [([0.0, 0.1], 2, 0.5), ([0.5, 0.6], 2, 0.5), ([0.9, 1.0], 1, 1.0)]
    gaps = sum(c["sessions"] / 5 * abs(c["outcome_rate"] - c["mean_score"]) for c in cells)
    assert gaps == pytest.approx(expected_calibration_error(labels, scores))


@needs_espeak
def test_every_session_is_as_long_as_the_last_reported_count(checked):
    folder, result = checked
    assert len(result["sessions"]) == 6 and not result["failed_sessions"]
    assert all(s["segments"] >= AT[-1] for s in result["sessions"])
    assert sorted(s["label"] for s in result["sessions"]) == [0, 0, 0, 1, 1, 1]
    assert not set(result["held_out"]["voices"]) & set(demo_recipe.corpus_speakers(np.random.default_rng(0)))
    assert result["held_out"]["excluded_corpus_seeds"] == [0]  # the demo checkpoint records its seed, 0
    report = (folder / "report.md").read_text()
    assert "| 3 | 6 (3) |" in report and "not a diagnosis" in report and (folder / "long_sessions.png").is_file()


@needs_espeak
def test_the_numbers_are_those_of_the_score_after_exactly_k_segments(checked, checkpoint_with_interval):
    folder, result = checked
    model = ScreeningModel.from_pretrained(checkpoint_with_interval)
    params = SegmentParams(checkpoint_speech(model)[0])
    dataset = {s.session_id: s for s in read_manifest(folder / "audio" / "manifest.csv").sessions}
    labels, scores, bounds = [], {k: [] for k in AT}, {k: [] for k in AT}
    for stored in result["sessions"]:
        # The speech path from the audio, without the check's segment cache; the model's own session score.
        chunks = session_chunks(session_audio(dataset[stored["session_id"]]), params).chunks
        vectors = torch.cat([model.encode_segments([np.frombuffer(c.pcm, np.int16)], 16000) for c in chunks])
        assert len(chunks) == stored["segments"]
        assert all(len(c.pcm) == 2 * 7 * 16000 for c in chunks[:AT[-1]])  # whole chunks up to the last count
        labels.append(stored["label"])
        for k in AT:
            score = model.session_score(vectors[:k])
            assert stored["prefix_probabilities"][k - 1] == pytest.approx(score.probability, abs=1e-5)
            assert stored["prefix_intervals"][k - 1] == pytest.approx([score.low, score.high], abs=1e-5)
            scores[k].append(score.probability)
            bounds[k].append([score.low, score.high])
    labels = np.asarray(labels)
    for k in AT:
        row, p, b = result["rows"][str(k)], np.asarray(scores[k]), np.asarray(bounds[k])
        assert row["auc"] == pytest.approx(roc_auc_score(labels, p), abs=1e-9)
        assert row["ece"] == pytest.approx(expected_calibration_error(labels, p), abs=1e-4)
        assert row["brier"] == pytest.approx(np.mean((p - labels) ** 2), abs=1e-5)
        assert row["mean_score_positive"] == pytest.approx(p[labels == 1].mean(), abs=1e-5)
        assert row["mean_score_negative"] == pytest.approx(p[labels == 0].mean(), abs=1e-5)
        assert row["interval_coverage"] == pytest.approx(interval_coverage(labels, p, b[:, 0], b[:, 1]))
        assert row["interval_coverage_sampled"] == pytest.approx(sampled_coverage(labels, p, b[:, 0], b[:, 1], 0.9))
        assert sum(c["sessions"] for c in row["reliability"]) == len(p)
    reference = result["rows"][str(AT[-1])]["auc"]
    assert result["goal"]["points"]["2"]["auc_gap"] == pytest.approx(abs(result["rows"]["2"]["auc"] - reference))


@needs_espeak
def test_a_folder_holding_the_same_sessions_is_reused(checked, checkpoint_with_interval):
    folder, result = checked
    audio = folder / "audio"
    before = {p.name: p.stat().st_mtime_ns for p in audio.glob("*.wav")}
    speech = checkpoint_speech(ScreeningModel.from_pretrained(checkpoint_with_interval))[0]
    generate_long_sessions(audio, result["held_out"]["voices"], 5, AT[-1], speech, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in audio.glob("*.wav")} == before


@pytest.mark.parametrize("problem", ["missing", "file", "not a checkpoint", "output is a file", "bad --at"])
def test_bad_paths_and_values_are_one_line(tmp_path, capsys, problem):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    checkpoint, extra = {"missing": (str(tmp_path / "none"), []), "file": (str(tmp_path / "notes.txt"), []),
                         "not a checkpoint": (str(tmp_path / "empty"), []),
                         "output is a file": (DEMO_CHECKPOINT, ["--output", str(tmp_path / "notes.txt")]),
                         "bad --at": (DEMO_CHECKPOINT, ["--at", "5,2"])}[problem]
    try:
        code = main(["long-session-check", checkpoint, "--output", str(tmp_path / "out"), *extra])
    except SystemExit as refused:  # a path option is checked as it is parsed
        code = refused.code
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith("moodstream long-session-check: error:")
    assert {"missing": "none does not exist", "file": "notes.txt is a file, not a folder",
            "not a checkpoint": "is not a moodstream checkpoint", "output is a file": "is a file, not a folder",
            "bad --at": "increasing segment counts"}[problem] in error
    assert not (tmp_path / "out").exists()
