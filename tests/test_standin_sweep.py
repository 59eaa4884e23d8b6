"""The stand-in sweep chooses on validation folds: it reads validation predictions and never test ones."""
import json

import pytest

from moodstream.trainer.standin_sweep import parse_setting, sweep_table, validation_aucs


def test_a_setting_is_a_name_and_its_overrides():
    assert parse_setting("small-data:") == ("small-data", [])
    assert parse_setting("s2:stage2.lr_head=1e-3,model.session_time_pooling=mean") == (
        "s2", ["stage2.lr_head=1e-3", "model.session_time_pooling=mean"])
    with pytest.raises(ValueError, match="NAME:section.key=value"):
        parse_setting("stage2.lr_head=1e-3")


def _fold(folder, name, validation, test):
    def predictions(probabilities):
        return {"session_labels": [0, 1, 0, 1], "session_probabilities": probabilities,
                "segment_labels": [0, 1, 0, 1], "segment_probabilities": probabilities}

    (folder / name).mkdir(parents=True)
    (folder / name / "result.json").write_text(json.dumps({
        "stage1_epochs": 12, "stage2_epochs": 11,
        "calibration": {"method": "cross-fit", "chosen": "platt",
                        "held_out_log_loss": {"none": 0.6, "platt": 0.3 if name == "fold-1" else 0.5}},
        "validation": {"predictions": predictions(validation)}, "test": {"predictions": predictions(test)}}))


def test_validation_aucs_pool_the_validation_folds_only(tmp_path):
    # Validation ranks every positive first; test ranks them last: only validation may show.
    _fold(tmp_path, "fold-1", [0.1, 0.9, 0.2, 0.8], [0.9, 0.1, 0.8, 0.2])
    _fold(tmp_path, "fold-2", [0.3, 0.7, 0.4, 0.6], [0.7, 0.3, 0.6, 0.4])
    result = validation_aucs(tmp_path)
    assert result["validation_session_auc"] == 1.0
    assert result["validation_segment_auc"] == 1.0
    assert result["sessions"] == 8
    assert [tuple(e) for e in result["epochs"]] == [(12, 11)] * 2
    # the calibrated out-of-fold log loss comes from the training actors (the fold's own cross-fitting)
    assert result["out_of_fold_log_loss"] == pytest.approx(0.4)
    assert result["out_of_fold_log_loss_uncalibrated"] == pytest.approx(0.6)
    table = sweep_table({"small-data": {"overrides": [], **result}})
    assert "| small-data | (none) | 100.0 | 100.0 | 0.4000 (0.6000) | 12/11 12/11 |" in table


def test_the_seeds_table_gives_the_mean_and_range_of_each_system():
    from moodstream.trainer.standin_run import seeds_table

    def summary(ece: float) -> dict:
        whole = {"prefix": "100 %", "ece": ece, "calibrated_ece": 0.08, "brier": 0.05, "log_loss": 0.2, "auc": 0.9,
                 "coverage": 0.5, "sampled_coverage": 0.9, "interval_width": 0.1}
        first = dict(whole, prefix="1 segment", ece=ece + 0.1)
        return {"pooled_prefix": [first, whole], "pooled_segment_auc": 0.9,
                "pooled_session_at_threshold": {"f1": 0.9, "sensitivity": 1.0, "specificity": 0.8},
                "pooled_coverage_every_prefix": {"coverage": 0.4, "sampled_coverage": 0.85, "interval_width": 0.12}}

    table = seeds_table({0: {"m": {"summary": summary(0.06)}}, 1: {"m": {"summary": summary(0.10)}}}, ["m"],
                        {"m": "model"})
    assert "| test folds pooled, seeds 0, 1: mean [lowest, highest] | model |" in table
    assert "| whole-session ECE % | 8.0 [6.0, 10.0] |" in table
    assert "| ECE after 1 segment % | 18.0 [16.0, 20.0] |" in table
    assert "| coverage allowing for bin size, every prefix % | 85.0 [85.0, 85.0] |" in table
