"""Training on a machine without the Hugging Face hub: where recipe paths point, and a backbone that cannot be had."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from moodstream.trainer.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_set_paths_name_files_from_the_working_directory_and_file_paths_from_the_files_folder(tmp_path,
                                                                                              monkeypatch):
    recipes, elsewhere = tmp_path / "recipes", tmp_path / "elsewhere"
    recipes.mkdir()
    (elsewhere / "mine").mkdir(parents=True)
    recipe = recipes / "r.toml"
    recipe.write_text('[data]\nformat = "manifest"\npath = "data/m.csv"\ntest_path = "data/t.csv"\n'
                      'cache_dir = "cache"\n[model]\npreset = "tiny"\n[run]\noutput = "runs/x"\n')
    monkeypatch.chdir(elsewhere)

    from_file = TrainConfig.load(recipe)
    assert from_file.resolve(from_file.data.path) == recipes / "data/m.csv"
    assert from_file.resolve(from_file.data.test_path) == recipes / "data/t.csv"
    assert from_file.resolve(from_file.data.cache_dir) == recipes / "cache"
    assert from_file.output_dir == elsewhere / "runs/x"

    from_command_line = TrainConfig.load(recipe, ["data.path=data/other.csv", "data.test_path=t2.csv",
                                                  "data.cache_dir=c2", "model.backbone=mine",
                                                  "run.output=runs/y"])
    assert from_command_line.resolve(from_command_line.data.path) == elsewhere / "data/other.csv"
    assert from_command_line.resolve(from_command_line.data.test_path) == elsewhere / "t2.csv"
    assert from_command_line.resolve(from_command_line.data.cache_dir) == elsewhere / "c2"
    assert from_command_line.model["backbone"] == str(elsewhere / "mine")  # a folder here, not a hub id
    assert from_command_line.output_dir == elsewhere / "runs/y"
    # Recorded in the run's config.toml as the absolute paths they named.
    assert from_command_line.to_dict()["data"]["path"] == str(elsewhere / "data/other.csv")

    hub_id = TrainConfig.load(recipe, ["model.backbone=facebook/wav2vec2-base", "data.test_path="])
    assert hub_id.model["backbone"] == "facebook/wav2vec2-base" and hub_id.data.test_path == ""


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the socket closes: connections are refused


# torch and transformers are imported before the clock starts: what is timed is the backbone's lookup.
TIMED_MODEL_INIT = """
import json, sys, time
import torch, transformers, transformers.models.wav2vec2.modeling_wav2vec2
from moodstream.compose.cli import main
started = time.monotonic()
code = main(["model", "init", sys.argv[1], "--backbone", "facebook/wav2vec2-large"])
print(json.dumps({"code": code, "seconds": time.monotonic() - started}))
"""


def test_a_backbone_neither_cached_nor_reachable_fails_at_once_in_one_line(tmp_path):
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(tmp_path / "hf"),
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", TIMED_MODEL_INIT, str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=120, env=env, cwd=tmp_path)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    lines = run.stderr.strip().splitlines()
    assert result["code"] == 2 and len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr and "Retrying" not in run.stderr
    assert "'facebook/wav2vec2-large' is neither a local folder nor in the Hugging Face cache" in lines[0]
    assert "the hub cannot be reached" in lines[0]
    # huggingface_hub's own retries took about 25 s here; the one request without retries is refused at once.
    assert result["seconds"] < 2.0, result
    assert not (tmp_path / "out").exists()
