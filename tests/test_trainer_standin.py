"""The RAVDESS stand-in task (acted emotion, not depression): sessions, folds, and the baseline on them."""
from pathlib import Path

import pytest

from moodstream.trainer.config import TrainConfig
from moodstream.trainer.standin import read_ravdess_standin

RAVDESS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ravdess16k"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not (RAVDESS / "manifest.csv").is_file(), reason=f"no RAVDESS copy at {RAVDESS}"),
]


def test_standin_sessions_are_matched_and_folds_are_actor_disjoint():
    dataset = read_ravdess_standin(RAVDESS)
    assert len(dataset.sessions) == 36 and not dataset.skipped
    for session in dataset.sessions:
        assert len(session.spans) == 8
    folds = {}
    for session in dataset.sessions:
        folds.setdefault(session.fold, set()).add(session.speaker_id)
    assert sorted(folds) == [str(i) for i in range(1, 7)]
    assert all(len(actors) == 3 for actors in folds.values())
    assert folds["1"] == {"actor01", "actor02", "actor03"}


def test_openSMILE_baseline_beats_chance_on_the_standin(tmp_path):
    pytest.importorskip("opensmile", reason="needs the eval extra (pip install '.[eval]')")
    from moodstream.trainer.baseline import run_baseline

    config = TrainConfig.from_dict({"data": {"format": "ravdess-standin", "path": str(RAVDESS),
                                             "cache_dir": str(tmp_path / "cache")},
                                    "run": {"output": str(tmp_path / "run"), "progress": False}})
    result = run_baseline(config, "eGeMAPSv02", tmp_path / "baseline")
    assert len(result["folds"]) == 6 and result["sessions"] == 36
    assert result["pooled_session_auc"] > 0.7
    assert result["pooled_segment_auc"] > 0.7


def test_one_model_on_chosen_actors_instead_of_cross_validation(tmp_path):
    from moodstream.trainer.prepare import prepare_data

    config = TrainConfig.from_dict({"data": {"format": "ravdess-standin", "path": str(RAVDESS),
                                             "cache_dir": str(tmp_path / "cache"),
                                             "train_actors": list(range(1, 16)), "validation_actors": [16, 17, 18]},
                                    "run": {"output": str(tmp_path / "run"), "progress": False}})
    dataset, _, splits = prepare_data(config)
    assert len(splits) == 1
    split = splits[0]
    assert len(split.train) == 30 and len(split.validation) == 6 and not split.test
    assert {s.split("-")[0] for s in split.validation} == {"actor16", "actor17", "actor18"}
    assert "actors chosen: train 1-15, validation 16-18" in dataset.summary_markdown()
    assert dataset.positive_class == "low-mood (sad) session"
