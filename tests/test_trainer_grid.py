"""The ablation grid and the openSMILE baseline on generated audio."""
import json

import pytest

from moodstream.compose.cli import main
import trainer_fixtures as fx


def test_ablation_grid_writes_one_table(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run.output is relative to where the command runs
    manifest = fx.make_tone_manifest(tmp_path / "data", (4, 2, 2), seconds=4.0)
    config = fx.write_tiny_recipe(tmp_path / "recipe.toml", manifest, stage1={"lr_backbone": 1e-3})
    assert main(["ablate", str(config), "--grid", "model.pooling=attention,max",
                 "--grid", "model.session_head=self-attention,last-step"]) == 0
    table = (tmp_path / "out-ablation" / "ablation.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["recipe", "model.pooling=max", "model.session_head=last-step"]
    assert (tmp_path / "out-ablation" / "pooling-max" / "checkpoint" / "config.json").is_file()


def test_opensmile_baseline_on_the_same_splits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pytest.importorskip("opensmile", reason="the openSMILE baseline needs the eval extra (pip install '.[eval]')")
    manifest = fx.make_tone_manifest(tmp_path / "data", (8, 4, 4), seconds=4.0)
    config = fx.write_tiny_recipe(tmp_path / "recipe.toml", manifest, stage1={"lr_backbone": 1e-3})
    assert main(["baseline", str(config), "--feature-set", "IS09_emotion"]) == 0
    result = json.loads((tmp_path / "out-baseline-is09_emotion" / "result.json").read_text())
    assert result["feature_dimensions"] == 384
    assert result["test"]["session"]["n"] == 4
    # pitch separates the generated classes: a linear model on IS09 functionals must see it
    assert result["test"]["segment"]["auc"] > 0.8


def test_linear_probe_baseline_reads_the_recipes_frozen_encoder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run.output is relative to where the command runs
    manifest = fx.make_tone_manifest(tmp_path / "data", (8, 4, 4), seconds=4.0)
    config = fx.write_tiny_recipe(tmp_path / "recipe.toml", manifest, stage1={"lr_backbone": 1e-3})
    assert main(["baseline", str(config), "--feature-set", "linear-probe"]) == 0
    result = json.loads((tmp_path / "out-baseline-linear-probe" / "result.json").read_text())
    # the tiny preset's wav2vec2 is 32 wide: mean + std of its summed layers
    assert result["feature_dimensions"] == 64
    assert result["test"]["session"]["n"] == 4
    assert "linear probe" in (tmp_path / "out-baseline-linear-probe" / "report.md").read_text()
    cached = list((tmp_path / "cache").rglob("frames-*.pt"))
    assert len(cached) == 1  # a second run reads the features back
    assert main(["baseline", str(config), "--feature-set", "linear-probe"]) == 0
    again = json.loads((tmp_path / "out-baseline-linear-probe" / "result.json").read_text())
    assert again["test"]["predictions"] == result["test"]["predictions"]
    assert len(list((tmp_path / "cache").rglob("frames-*.pt"))) == 1
