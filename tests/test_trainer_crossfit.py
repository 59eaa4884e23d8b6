"""Cross-fitted calibration: out-of-fold scores never come from a model that heard the speaker, the chosen
calibration is no worse than none out of sample, and the checkpoint's interval is the same in the batch and
incremental scorers."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moodstream.model import ModelConfig, ScreeningModel
from moodstream.trainer.calibration_fit import OutOfFold, candidates_for, fit_calibration
from moodstream.trainer.config import TrainConfig
from moodstream.trainer.crossfit import inner_splits
from moodstream.trainer.dataset import Session
from moodstream.trainer.folds import Split
from moodstream.trainer.prefixes import interval_coverage
from moodstream.trainer.train import train
import trainer_fixtures as fx


REPLICATES = 40


def saturated_out_of_fold(seed: int = 0, speakers: int = 12) -> OutOfFold:
    """Two sessions per speaker (one of each class), three prefixes each: the recurrent part at +-40 with a
    fifth of the sessions on the wrong side, the segment evidence a noisy but honest score."""
    rng = np.random.default_rng(seed)
    oof = OutOfFold()
    for speaker in range(speakers):
        for label in (0, 1):
            sign = 1 if label else -1
            wrong = rng.random() < 0.2
            recurrent = np.full(3, 40.0 * (-sign if wrong else sign))
            segment = sign * 1.5 + rng.normal(0, 1.5, 3)
            oof.add(f"s{speaker}-{label}", f"p{speaker}", label, np.column_stack([recurrent, segment]))
    return oof


def test_the_chosen_calibration_is_no_worse_than_none_out_of_sample_and_tames_saturation():
    oof = saturated_out_of_fold()
    fit = fit_calibration(oof, replicates=REPLICATES, seed=[0, 7])
    assert set(fit.held_out_log_loss) == set(candidates_for(oof))
    assert fit.held_out_log_loss[fit.chosen] <= fit.held_out_log_loss["none"]
    assert fit.held_out_log_loss[fit.chosen] < 0.5 * fit.held_out_log_loss["none"]  # saturated: none is very wrong
    for nested in ("temperature", "platt", "platt-parts"):  # contain (1, 1, 0): never worse in sample
        assert fit.in_sample_log_loss[nested] <= fit.in_sample_log_loss["none"] + 1e-9
    assert fit.replicates.shape == (REPLICATES, 3) and np.all(fit.replicates[:, :2] >= 0)
    assert fit.coefficients[0] < 0.5  # the recurrent part's certainty is discounted
    # the same seed gives the same replicates
    assert np.array_equal(fit_calibration(oof, REPLICATES, [0, 7]).replicates, fit.replicates)


def test_without_a_skip_path_only_the_single_logit_candidates_are_tried():
    oof = OutOfFold()
    for i in range(8):
        oof.add(f"s{i}", f"p{i}", i % 2, np.column_stack([np.linspace(-1, 1, 2) + (i % 2) * 2 - 1, np.zeros(2)]))
    assert candidates_for(oof) == ["none", "temperature", "platt"]
    assert fit_calibration(oof, 0, 0).replicates.shape == (0, 3)


def test_when_no_calibration_wins_the_interval_comes_from_temperature_refits():
    oof = OutOfFold()
    for speaker in range(8):   # each speaker's scores exactly calibrated: p = 0.75 holds for 3 of 4 sessions
        for index, (logit, label) in enumerate([(np.log(3), 1)] * 3 + [(np.log(3), 0)] +
                                               [(-np.log(3), 0)] * 3 + [(-np.log(3), 1)]):
            oof.add(f"p{speaker}-{index}", f"p{speaker}", label, [[logit, 0.0]])
    fit = fit_calibration(oof, REPLICATES, 0)
    assert fit.chosen == "none" and fit.interval_from == "temperature"
    assert fit.replicates.shape == (REPLICATES, 3)
    assert fit.replicates[:, :2] == pytest.approx(1.0, abs=1e-6)  # every resample is as calibrated


def test_one_class_out_of_fold_is_left_uncalibrated_with_a_note():
    oof = OutOfFold()
    for i in range(4):
        oof.add(f"s{i}", f"p{i}", 1, [[1.0, 0.5]])
    fit = fit_calibration(oof, 10, 0)
    assert fit.chosen == "none" and "one class" in fit.note and len(fit.replicates) == 0


def test_interval_coverage_counts_intervals_holding_their_bins_outcome_rate():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([0.1, 0.2, 0.8, 0.9])
    # two bins of two, outcome rates 0 and 1: the first and third intervals hold theirs
    assert interval_coverage(labels, probabilities, [0.0, 0.1, 0.7, 0.8], [0.2, 0.3, 1.0, 0.95], bins=2) == 0.5


def sessions_of(speakers: int, per_speaker: int = 2) -> dict[str, Session]:
    out = {}
    for p in range(speakers):
        for k in range(per_speaker):
            out[f"p{p}-{k}"] = Session(f"p{p}-{k}", f"p{p}", k % 2, [], fold="1")
    return out


def test_inner_folds_are_speaker_disjoint_and_hold_out_every_training_session_once():
    sessions = sessions_of(14) | {f"v{i}": Session(f"v{i}", f"v{i}", i % 2, []) for i in range(2)}
    train_ids = [s for s in sessions if s.startswith("p")]
    split = Split("fold-1", train_ids, ["v0", "v1"], [])
    inner, note = inner_splits(split, sessions, 5, seed=3)
    assert note is None and len(inner) == 5
    held_out = [s for fold in inner for s in fold.test]
    assert sorted(held_out) == sorted(train_ids)
    for fold in inner:
        assert fold.validation == ["v0", "v1"]
        assert {sessions[s].speaker_id for s in fold.test}.isdisjoint({sessions[s].speaker_id for s in fold.train})
        assert {sessions[s].label for s in fold.test} == {0, 1}


def test_too_few_training_speakers_fall_back_to_one_fold_per_speaker_or_refuse():
    sessions = sessions_of(3)
    split = Split("main", list(sessions), [], [])
    inner, note = inner_splits(split, sessions, 5, seed=0)
    assert len(inner) == 3 and "3 training speakers cannot fill scoring.inner_folds = 5" in note
    one = sessions_of(1)
    with pytest.raises(ValueError, match='needs at least 2 training speakers.*"platt" or "none"'):
        inner_splits(Split("main", list(one), [], []), one, 5, seed=0)


def tone_recipe(root: Path, manifest: Path, output: Path, calibration: str = "cross-fit") -> TrainConfig:
    return TrainConfig.from_dict({
        "data": {"format": "manifest", "path": str(manifest), "cache_dir": str(root / "cache")},
        "speech": {"chunk_seconds": 4.0, "min_last_chunk_seconds": 1.0},
        "model": {"preset": "tiny", "fine_tuning": "frozen"},   # frozen: every inner fold reads cached features
        "stage1": {"epochs": 3, "batch_size": 8, "patience": 50},
        "stage2": {"epochs": 3, "batch_size": 4, "lr_head": 6e-3, "patience": 50},
        "scoring": {"calibration": calibration, "inner_folds": 4, "interval_replicates": REPLICATES},
        "run": {"output": str(output), "progress": False, "tsne": False, "seed": 3, "recipe": "small-data"},
    })


@pytest.fixture(scope="module")
def crossfit_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("crossfit")
    manifest = fx.make_tone_manifest(root / "tones", (8, 4, 4), seconds=9.0)
    return root / "run", train(tone_recipe(root, manifest, root / "run")), manifest


def test_cross_fitting_leaves_the_final_networks_as_they_would_be_without_it(crossfit_run, tmp_path):
    run, result, manifest = crossfit_run
    plain = train(tone_recipe(run.parent, manifest, tmp_path / "plain", calibration="none"))
    crossfitted = ScreeningModel.from_pretrained(result["checkpoint"]).state_dict()
    uncalibrated = ScreeningModel.from_pretrained(plain["checkpoint"]).state_dict()
    assert crossfitted.keys() == uncalibrated.keys()
    assert all(torch.equal(crossfitted[name], uncalibrated[name]) for name in crossfitted)


def test_out_of_fold_scores_never_come_from_a_model_that_heard_the_speaker(crossfit_run):
    run, result, manifest = crossfit_run
    import csv

    with open(manifest) as handle:
        rows = list(csv.DictReader(handle))
    speaker = {f"p{int(r['participant_id'][1:]):02d}": r["participant_id"] for r in rows}
    train_sessions = {r["participant_id"] for r in rows if r["split"] == "train"}
    records = [json.loads(p.read_text()) for p in sorted((run / "crossfit").glob("inner-*/out_of_fold.json"))]
    assert len(records) == 4
    held_out = [s for record in records for s in record["held_out"]]
    assert sorted(held_out) == sorted(train_sessions)   # every training session scored exactly once
    for record in records:
        heard = {speaker[s] for s in record["train"] + record["validation"]}
        assert heard.isdisjoint({speaker[s] for s in record["held_out"]})
        for parts in record["held_out"].values():
            assert np.asarray(parts).shape[1] == 2 and len(parts) >= 2  # every prefix, both parts
    calibration = result["calibration"]
    assert calibration["method"] == "cross-fit" and calibration["out_of_fold"]["sessions"] == 8
    assert calibration["held_out_log_loss"][calibration["chosen"]] <= calibration["held_out_log_loss"]["none"]
    assert result["threshold_chosen_on"] == "out-of-fold training sessions"
    assert result["out_of_fold"]["prefix"][-1]["prefix"] == "100 %"
    for name in ("report.md", "test_reliability.png", "out_of_fold_reliability.png"):
        assert (run / name).is_file(), name
    report = (run / "report.md").read_text()
    assert "Out of fold" in report and "held out" in report


def test_the_checkpoint_carries_the_interval_and_both_scorers_give_it(crossfit_run):
    _, result, _ = crossfit_run
    model = ScreeningModel.from_pretrained(result["checkpoint"])
    config = model.config
    assert config.notes["calibration"]["method"] == "cross-fit"
    assert config.notes["threshold_chosen_on"] == "out-of-fold training sessions"
    assert config.decision_threshold == pytest.approx(config.notes["calibration"]["threshold"], abs=1e-4)
    assert len(config.calibration_replicates) == REPLICATES and config.interval_level == 0.9
    vectors = torch.randn(6, config.segment_vector_size)
    scorer = model.incremental_scorer()
    state = scorer.init_state()
    for n in range(1, 7):
        state, live = scorer.step_scored(state, vectors[n - 1])
        batch = model.session_score(vectors[:n])
        assert batch.has_interval and live.has_interval
        assert (live.probability, live.low, live.high) == pytest.approx((batch.probability, batch.low, batch.high),
                                                                         abs=1e-6)
        assert live.low <= live.probability <= live.high
    # every test prefix in the report has its interval's coverage
    assert all("coverage" in row for row in result["test"]["prefix"])


def test_a_checkpoint_without_replicates_says_it_has_no_interval(tmp_path):
    torch.manual_seed(0)
    model = ScreeningModel(ModelConfig.tiny(calibration_scale=0.5, calibration_bias=0.1))
    loaded = ScreeningModel.from_pretrained(model.save_pretrained(tmp_path / "checkpoint"))
    vectors = torch.randn(3, loaded.config.segment_vector_size)
    assert not loaded.session_score(vectors).has_interval
    _, live = loaded.incremental_scorer().step_scored(loaded.incremental_scorer().init_state(), vectors[0])
    assert not live.has_interval and live.low is None


def test_the_linear_probe_is_calibrated_the_same_way(crossfit_run, tmp_path):
    from moodstream.trainer.baseline import run_baseline

    _, _, manifest = crossfit_run
    config = TrainConfig.from_dict({
        "data": {"format": "manifest", "path": str(manifest), "cache_dir": str(tmp_path / "cache")},
        "speech": {"chunk_seconds": 4.0, "min_last_chunk_seconds": 1.0},
        "model": {"preset": "tiny", "fine_tuning": "frozen"},
        "scoring": {"inner_folds": 4, "interval_replicates": REPLICATES},
        "run": {"output": str(tmp_path / "probe"), "progress": False, "seed": 3}})
    result = run_baseline(config, "linear-probe", tmp_path / "probe")
    assert result["calibration"]["method"] == "cross-fit"
    assert set(result["calibration"]["held_out_log_loss"]) == {"none", "temperature", "platt"}
    assert result["threshold_chosen_on"] == "out-of-fold training sessions"
    assert result["out_of_fold"]["session"]["n"] == 8
    whole = [p[-1] for p in result["test"]["predictions"]["session_prefix_probabilities"]]
    assert whole == pytest.approx(result["test"]["predictions"]["session_probabilities"])


def test_evaluating_a_cross_fitted_checkpoint_reports_its_interval_and_calibration(crossfit_run, tmp_path):
    from moodstream.trainer.evaluate import evaluate_checkpoint

    run, trained, manifest = crossfit_run
    result = evaluate_checkpoint(trained["checkpoint"], manifest, tmp_path / "evaluation", split="test",
                                 cache_dir=str(run.parent / "cache"), tsne=False, progress=False)
    assert result["threshold_chosen_on"] == "out-of-fold training sessions"
    assert result["calibration"]["method"] == "cross-fit"
    assert all("coverage" in row and "sampled_coverage" in row for row in result["test"]["prefix"])
    assert result["test"]["session"]["sensitivity"] == result["test"]["session"]["recall"]
    report = (tmp_path / "evaluation" / "report.md").read_text()
    assert "cross-fitted on 8 out-of-fold training sessions" in report and "interval coverage" in report
    # the out-of-fold scores' metrics travel in the checkpoint's notes
    assert [row["prefix"] for row in result["calibration"]["out_of_fold_scores"]] == ["25 %", "50 %", "75 %", "100 %"]
    assert "The out-of-fold scores, calibrated" in report
    assert (tmp_path / "evaluation" / "test_reliability.png").is_file()
