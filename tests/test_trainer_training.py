"""Two-stage training on generated audio: the loss really falls, the checkpoint loads, resume is exact."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moodstream.compose.cli import main
from moodstream.model import ScreeningModel
from moodstream.trainer.config import TrainConfig
from moodstream.trainer.folds import LeakageError
from moodstream.trainer.train import train
import trainer_fixtures as fx


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return fx.make_tone_manifest(tmp_path_factory.mktemp("tones"), (8, 4, 4), seconds=6.0)


def recipe(manifest: Path, output: Path, **stage) -> TrainConfig:
    return TrainConfig.from_dict({
        "data": {"format": "manifest", "path": str(manifest), "cache_dir": str(output.parent / "cache"),
                 },
        "speech": {"chunk_seconds": 4.0, "min_last_chunk_seconds": 1.0},
        "model": {"preset": "tiny", **stage.get("model", {})},
        "stage1": {"epochs": stage.get("epochs1", 8), "batch_size": 8, "lr_backbone": 1e-3, "patience": 50},
        "stage2": {"epochs": stage.get("epochs2", 8), "batch_size": 4, "lr_head": 6e-3, "patience": 50},
        # Cross-fitting retrains both stages once per inner fold (tests/test_trainer_crossfit.py): these tests
        # calibrate on validation, which trains the networks once.
        "scoring": {"calibration": stage.get("calibration", "platt")},
        "run": {"output": str(output), "progress": False, "tsne": False, "seed": 3, "recipe": stage.get("recipe", "paper")},
    })


def read_log(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_two_stage_training_lowers_the_loss_and_writes_a_loadable_checkpoint(manifest, tmp_path):
    result = train(recipe(manifest, tmp_path / "run"))
    log = read_log(tmp_path / "run" / "log.csv")
    for stage in ("stage1", "stage2"):
        losses = [float(row["train_loss"]) for row in log if row["stage"] == stage]
        assert len(losses) == 8
        assert min(losses[-3:]) < 0.7 * losses[0], (stage, losses)
    model = ScreeningModel.from_pretrained(result["checkpoint"])
    assert model.config.decision_threshold == pytest.approx(result["threshold"], abs=1e-4)
    assert model.config.notes["threshold_chosen_on"] == "validation"
    # the trained model separates the held-out classes (low steady pitch vs high pitch)
    assert result["test"]["segment"]["auc"] > 0.8
    for name in ("report.md", "test_roc.png", "test_confusion_session.png", "test_sessions.csv"):
        assert (tmp_path / "run" / name).is_file(), name
    report = (tmp_path / "run" / "report.md").read_text()
    assert "not a diagnosis" in report and "validation set (never on the test set)" in report


def test_resume_after_interruption_gives_the_same_model(manifest, tmp_path):
    reference = train(recipe(manifest, tmp_path / "straight", epochs1=5, epochs2=4))

    class Interrupt(Exception):
        pass

    def stop_in_stage1(stage, epoch, row):
        if stage == "stage1" and epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(recipe(manifest, tmp_path / "resumed", epochs1=5, epochs2=4), on_epoch_end=stop_in_stage1)
    assert (tmp_path / "resumed" / "stage1.pt").is_file()
    assert not (tmp_path / "resumed" / "checkpoint").exists()
    resumed = train(recipe(manifest, tmp_path / "resumed", epochs1=5, epochs2=4))
    epochs = [(row["stage"], int(row["epoch"])) for row in read_log(tmp_path / "resumed" / "log.csv")]
    assert epochs == [("stage1", e) for e in range(1, 6)] + [("stage2", e) for e in range(1, 5)]
    a = ScreeningModel.from_pretrained(reference["checkpoint"])
    b = ScreeningModel.from_pretrained(resumed["checkpoint"])
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), name
    assert resumed["test"]["session"]["auc"] == reference["test"]["session"]["auc"]


def test_train_and_evaluate_commands(manifest, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run.output is relative to where the command runs
    config = fx.write_tiny_recipe(tmp_path / "recipe.toml", manifest, model={"pooling": "mean"},
                                  scoring={"calibration": "platt"})
    assert main(["train", str(config), "--set", "model.session_head=last-step", "--set", "stage2.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "chosen on validation" in out
    model = ScreeningModel.from_pretrained(tmp_path / "out" / "checkpoint")
    assert model.config.session_head == "last-step" and model.config.pooling == "mean"
    assert "epochs = 3" in (tmp_path / "out" / "config.toml").read_text().split("[stage2]")[1]
    assert main(["evaluate", str(tmp_path / "out" / "checkpoint"), str(manifest), "--output",
                 str(tmp_path / "eval"), "--cache-dir", str(tmp_path / "cache"), "--no-tsne"]) == 0
    result = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert result["threshold"] == pytest.approx(model.config.decision_threshold)
    assert result["test"]["session"]["n"] == 4
    assert (tmp_path / "eval" / "report.md").is_file()


def test_bad_recipes_are_one_sentence_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "bad.toml"
    config.write_text("[stage1]\nlearning_rate = 3\n")
    assert main(["train", str(config)]) == 2
    assert "unknown key 'learning_rate' in [stage1]" in capsys.readouterr().err
    config.write_text("[data]\nformat = 'daic-woz'\npath = 'nowhere'\n[run]\noutput = 'never'\n")
    assert main(["train", str(config)]) == 2
    assert "no daic-woz folder" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()  # no output folder before the data is validated
    assert main(["train", str(config), "--set", "model.pooling=median"]) == 2
    assert "pooling must be one of" in capsys.readouterr().err


@pytest.mark.parametrize("setting, message", [
    (["--set", "data.folds=abc"], "data.folds must be an integer, got 'abc' (str)"),
    (["--set", "data.exclude=318"], "data.exclude must be a list of ids"),
    (["--set", "stage1.lr_head=fast"], "stage1.lr_head must be a number > 0, got 'fast' (str)"),
    (["--set", "run.tsne=1"], "run.tsne must be true or false"),
    (["--set", "speech.frame_ms=25"], "VAD frame must be 10, 20 or 30 ms"),
    (["--set", "data.segment_seconds=5"], "use speech.chunk_seconds"),
])
def test_wrongly_typed_settings_name_the_key_and_the_type(tmp_path, capsys, setting, message):
    config = tmp_path / "recipe.toml"
    config.write_text("[data]\nformat = 'manifest'\npath = 'x.csv'\n")
    assert main(["train", str(config), *setting]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_written_recipe_reads_back_as_the_same_recipe(tmp_path):
    config = TrainConfig.from_dict({
        "data": {"format": "manifest", "path": "x.csv", "exclude": [318, "321"], "time_offsets": {"318": 34}},
        "speech": {"chunk_seconds": 5},
        "model": {"preset": "tiny", "backbone_config": {"hidden_size": 32, "conv_dim": [16, 16]}},
        "stage1": {"lr_head": 1e-3, "epochs": 3},
    })
    assert config.data.exclude == ["318", "321"] and config.data.time_offsets == {"318": 34.0}
    (tmp_path / "config.toml").write_text(config.to_toml())
    assert TrainConfig.load(tmp_path / "config.toml").to_dict() == config.to_dict()


@pytest.mark.parametrize("values, message", [
    ({"stage1": {"epochs": 0}}, "stage1.epochs must be an integer >= 1, got 0"),
    ({"stage2": {"lr_head": -1e-3}}, "stage2.lr_head must be a number > 0, got -0.001"),
    ({"scoring": {"evidence_auc_tolerance": 2}}, "scoring.evidence_auc_tolerance must be a number in [0, 1], got 2"),
    ({"data": {"train_actors": [1, "2"]}}, "data.train_actors must be a list of integers, e.g. [1, 2, 3], "
                                           "got [1, '2'] (list)"),
    ({"stage1": {"monitor": "accuracy"}}, "stage1.monitor must be one of loss, auc, f1, got 'accuracy'"),
])
def test_a_value_out_of_range_names_the_key_and_the_range(values, message):
    with pytest.raises(ValueError) as refused:
        TrainConfig.from_dict(values)
    assert str(refused.value) == message


def test_a_quoted_number_in_the_recipe_is_refused(tmp_path, capsys):
    config = tmp_path / "recipe.toml"
    config.write_text('[data]\nformat = "manifest"\npath = "x.csv"\nfolds = "3"\n')
    assert main(["train", str(config)]) == 2
    assert "data.folds must be an integer, got '3' (str)" in capsys.readouterr().err


def test_frozen_backbone_features_are_computed_once_and_match(manifest, tmp_path):
    config = recipe(manifest, tmp_path / "frozen", epochs1=2, epochs2=2)
    config.model["fine_tuning"] = "frozen"
    from moodstream.trainer.loop import seed_everything
    from moodstream.trainer.prepare import prepare_data
    from moodstream.trainer.train import SplitTrainer

    _, store, splits = prepare_data(config)
    trainer = SplitTrainer(config, store, splits[0], tmp_path / "frozen")
    seed_everything(0)
    trainer.model = ScreeningModel(config.model_config())
    indices = trainer.segment_indices(splits[0].test)
    with torch.no_grad():
        direct = trainer.segment_vectors(indices)
        trainer.build_feature_cache(indices)
        assert trainer.feature_cache is not None
        cached = trainer.segment_vectors(indices)
    assert torch.allclose(direct, cached, atol=2e-2)  # fp16 cache of the frame features
    assert np.corrcoef(direct.flatten(), cached.flatten())[0, 1] > 0.999


def test_a_separate_test_set_is_scored_and_reported(tmp_path):
    data = fx.make_tone_manifest(tmp_path / "train-data", (8, 4, 2), seconds=6.0)
    test_set = fx.make_tone_manifest(tmp_path / "test-data", (0, 0, 4), seconds=6.0)
    rows = test_set.read_text().splitlines()
    # other speakers than the training data's p00..p13
    test_set.write_text("\n".join([rows[0]] + [row.replace("p0", "q0", 1) for row in rows[1:]]) + "\n")
    config = recipe(data, tmp_path / "run", epochs1=1, epochs2=1)
    config.data.test_path = str(test_set)
    result = train(config)
    assert result["test"]["session"]["n"] == 4
    summary = (tmp_path / "run" / "data_summary.md").read_text()
    assert "test set (data.test_path): 4 sessions" in summary and "2 test sessions of the training data left out" \
        in summary
    leaky = fx.make_tone_manifest(tmp_path / "leaky", (0, 0, 2), seconds=6.0)  # p00, p01: training speakers
    config.data.test_path = str(leaky)
    with pytest.raises(LeakageError, match="p00"):
        train(config)


def test_the_example_recipe_documents_every_key():
    import dataclasses
    import tomllib

    from moodstream.speech.path import CaptureSettings
    from moodstream.trainer.config import DataSection, RunSection, ScoringSection, StageSection

    recipe_path = Path(__file__).resolve().parents[1] / "configs" / "daic-woz.toml"
    values = tomllib.loads(recipe_path.read_text())
    for section, kind in (("data", DataSection), ("speech", CaptureSettings), ("stage1", StageSection),
                          ("stage2", StageSection), ("scoring", ScoringSection), ("run", RunSection)):
        keys = {f.name for f in dataclasses.fields(kind)}
        if section == "stage1":
            keys -= {"prefix_training", "label_smoothing"}  # stage-2 settings only (stage 1 refuses them)
        assert set(values[section]) == keys, section
    assert {"preset", "pretrained"} <= set(values["model"])  # the trainer's own [model] keys
    TrainConfig.from_dict(values)  # and it is a valid recipe


def test_recipes_resolve_by_corpus_size_and_explicit_values_win():
    base = {"data": {"format": "manifest", "path": "x.csv"}, "stage1": {"lr_head": 2e-3}}
    small = TrainConfig.from_dict(base).with_recipe(sessions=36)
    assert small.run.recipe == "small-data"
    assert small.stage1.lr_head == 2e-3  # set in the file: the recipe leaves it alone
    assert small.stage2.lr_head == 6e-3 and small.stage2.prefix_training
    assert small.model_config().feature_normalization == "standardize"
    assert (small.model_config().pooling, small.model_config().session_skip) == ("mean", "segment-mean")
    large = TrainConfig.from_dict(base).with_recipe(sessions=189)
    assert large.run.recipe == "paper"
    assert (large.stage1.lr_head, large.stage2.prefix_training) == (2e-3, False)
    assert large.model_config().feature_normalization == "none"
    assert (large.model_config().pooling, large.model_config().session_skip) == ("attention", "none")
    forced = TrainConfig.from_dict(base | {"run": {"recipe": "paper"}}).with_recipe(sessions=10)
    assert forced.run.recipe == "paper" and forced.stage1.lr_head == 2e-3
    with pytest.raises(ValueError, match="run.recipe must be one of"):
        TrainConfig.from_dict(base | {"run": {"recipe": "fast"}})


def test_small_data_checkpoint_carries_statistics_calibration_and_evidence(manifest, tmp_path):
    result = train(recipe(manifest, tmp_path / "small", epochs1=3, epochs2=3, recipe="small-data"))
    model = ScreeningModel.from_pretrained(result["checkpoint"])
    config = model.config
    assert config.feature_normalization == "standardize"
    assert float(model.segment_head.feature_std.min()) > 0 and float(model.segment_head.feature_mean.abs().max()) > 0
    assert config.notes["training_recipe"] == "small-data"
    calibration = config.notes["calibration"]
    if calibration["method"] == "platt":
        assert (config.calibration_scale, config.calibration_bias) == (calibration["scale"], calibration["bias"])
    assert 1 <= config.min_evidence_segments <= 2  # 6 s sessions: at most 2 segments of 4 s
    rows = result["test"]["prefix"]
    assert [r["prefix"] for r in rows][-4:] == ["25 %", "50 %", "75 %", "100 %"]
    assert rows[0]["prefix"] == "1 segment" and rows[0]["sessions"] == 4
    # the 100 % row is the session score itself
    full = result["test"]["predictions"]["session_prefix_probabilities"]
    assert [row[-1] for row in full] == pytest.approx(result["test"]["predictions"]["session_probabilities"])
    report = (tmp_path / "small" / "report.md").read_text()
    assert "at every point of a session" in report and (tmp_path / "small" / "test_prefix.png").is_file()
    assert 'recipe = "small-data"' in (tmp_path / "small" / "config.toml").read_text()


def test_stage_2_with_the_skip_path_starts_from_the_segment_classifier(manifest, tmp_path):
    result = train(recipe(manifest, tmp_path / "skip", epochs1=3, epochs2=3,
                          model={"session_skip": "segment-mean"}))
    stage2 = [row for row in read_log(tmp_path / "skip" / "log.csv") if row["stage"] == "stage2"]
    assert [row["epoch"] for row in stage2] == ["0", "1", "2", "3"]  # the warm start is judged too
    model = ScreeningModel.from_pretrained(result["checkpoint"])
    assert model.config.session_skip == "segment-mean"
    vectors = torch.randn(5, model.config.segment_vector_size)
    with torch.no_grad():
        segment_logits = model.segment_head.segment_logits(vectors)
        session_logit = float(model.session_head(vectors[None])[0])
    if model.config.notes["stage2_best_epoch"] == 0:  # kept as it started: the session logit is the mean segment logit
        assert session_logit == pytest.approx(float(segment_logits.mean()), abs=1e-5)
    scorer = model.incremental_scorer()
    state = scorer.init_state()
    for n in range(1, 6):
        state, probability = scorer.step(state, vectors[n - 1])
        assert probability == pytest.approx(model.score(vectors[:n]), abs=1e-6)


def test_frozen_features_are_kept_on_disk_for_the_next_fold(manifest, tmp_path):
    config = recipe(manifest, tmp_path / "frozen", epochs1=2, epochs2=2)
    config.model["fine_tuning"] = "frozen"
    from moodstream.trainer.loop import seed_everything
    from moodstream.trainer.prepare import prepare_data
    from moodstream.trainer.train import SplitTrainer

    _, store, splits = prepare_data(config)
    every = lambda t: t.segment_indices(splits[0].train + splits[0].validation + splits[0].test)  # noqa: E731
    caches = []
    for attempt in range(2):
        trainer = SplitTrainer(config, store, splits[0], tmp_path / f"frozen-{attempt}")
        seed_everything(0)
        trainer.model = ScreeningModel(config.model_config())
        trainer.build_feature_cache(every(trainer))
        caches.append(trainer.feature_cache)
        assert len(list(store.folder.glob("frames-*.pt"))) == 1
    assert all(torch.equal(a, b) for a, b in zip(*caches))
    # another encoder (other weights) gets its own features
    seed_everything(1)
    trainer.model = ScreeningModel(config.model_config())
    trainer.build_feature_cache(every(trainer))
    assert len(list(store.folder.glob("frames-*.pt"))) == 2
