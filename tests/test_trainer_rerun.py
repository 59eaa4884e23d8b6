"""No silent surprises: a re-run into a finished run folder with other settings is refused key by key (its
config.toml untouched) unless --force-new; values that must be positive are refused when the recipe loads;
`model init` keeps an existing folder; `evaluate` says what is wrong with its data path."""
from pathlib import Path

import pytest

from moodstream.compose.cli import main
from moodstream.trainer.recorded_run import changed_settings
import trainer_fixtures as fx


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return fx.make_tone_manifest(tmp_path_factory.mktemp("tones"), (4, 2, 2), seconds=5.0)


def write_recipe(folder: Path, manifest: Path) -> Path:
    return fx.write_tiny_recipe(
        folder / "recipe.toml", manifest, data={"cache_dir": str(folder / "cache")},
        stage1={"epochs": 1, "batch_size": 4}, stage2={"epochs": 1, "batch_size": 4}, scoring={"calibration": "none"},
        run={"output": str(folder / "run"), "recipe": "paper"})


def test_a_rerun_with_other_settings_is_refused_unless_force_new(manifest, tmp_path, capsys):
    recipe = write_recipe(tmp_path, manifest)
    assert main(["train", str(recipe)]) == 0
    recorded = (tmp_path / "run" / "config.toml").read_text()
    capsys.readouterr()

    # The same settings: the finished run is reported again, nothing retrained.
    assert main(["train", str(recipe)]) == 0
    assert "checkpoint:" in capsys.readouterr().out

    assert main(["train", str(recipe), "--set", "stage1.lr_head=0.002", "--set", "model.pooling=mean",
                 "--set", "run.progress=true"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"moodstream train: error: {tmp_path / 'run'} holds a run trained with other settings")
    assert "--force-new" in lines[0]
    # One line per changed setting; how the run is shown (run.progress) is no setting of the result.
    assert lines[1:] == ["  model.pooling: not set recorded, 'mean' now", "  stage1.lr_head: 0.006 recorded, 0.002 now"]
    assert (tmp_path / "run" / "config.toml").read_text() == recorded

    assert main(["train", str(recipe), "--set", "stage1.lr_head=0.002", "--force-new"]) == 0
    assert "lr_head = 0.002" in (tmp_path / "run" / "config.toml").read_text()
    # A new output folder is a new run.
    assert main(["train", str(recipe), "--set", f"run.output={tmp_path / 'other'}"]) == 0


def test_only_what_changes_the_result_counts_as_changed():
    recorded = {"stage1": {"lr_head": 0.006, "epochs": 3}, "run": {"progress": True, "output": "a", "seed": 0},
                "model": {"preset": "tiny"}, "scoring": {"removed_since": 1}}
    current = {"stage1": {"lr_head": 0.006, "epochs": 3}, "run": {"progress": False, "output": "/x/a", "seed": 1},
               "model": {"preset": "tiny", "pooling": "mean"}, "scoring": {"added_since": 2}}
    assert changed_settings(recorded, current) == ["model.pooling: not set recorded, 'mean' now",
                                                   "run.seed: 0 recorded, 1 now"]


@pytest.mark.parametrize("setting, message", [
    ("stage1.lr_head=-1e-3", "stage1.lr_head must be a number > 0, got -0.001"),
    ("stage1.lr_backbone=-1e-5", "stage1.lr_backbone must be a number >= 0, got -1e-05"),
    ("data.score_threshold=0", "data.score_threshold must be a number in (0, 24], got 0"),
])
def test_a_value_that_must_be_positive_is_refused_when_the_recipe_loads(tmp_path, capsys, setting, message):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[data]\nformat = "manifest"\npath = "x.csv"\n')
    assert main(["train", str(recipe), "--set", setting]) == 2
    assert capsys.readouterr().err.strip() == f"moodstream train: error: {message}"


def test_model_init_keeps_an_existing_folder_unless_force(tmp_path, capsys):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert main(["model", "init", "--tiny", str(folder)]) == 2
    assert capsys.readouterr().err.strip() == (f"moodstream model: error: {folder} is not empty: name a new "
                                          "folder, or pass --force to write into it")
    assert (folder / "config.json").read_text() == "{}"
    assert main(["model", "init", "--tiny", "--force", str(folder)]) == 0
    assert (folder / "config.json").read_text() != "{}"


def test_evaluate_says_a_data_path_does_not_exist_and_a_folder_of_recordings_needs_labels(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint"
    assert main(["model", "init", "--tiny", str(checkpoint)]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(checkpoint), str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (f"moodstream evaluate: error: argument data: {tmp_path / 'nowhere'} "
                                               "does not exist")
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    (recordings / "a.wav").write_bytes(fx.write_wav_bytes(fx.voice(2.0, 120, 0.1, 0)))
    assert main(["evaluate", str(checkpoint), str(recordings), "--output", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"moodstream evaluate: error: cannot tell the data format of {recordings}")
    assert "recordings alone carry no labels" in err and "\n" not in err
