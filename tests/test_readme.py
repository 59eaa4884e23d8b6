"""The README's code runs as printed."""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def python_block(after_heading: str) -> str:
    text = README.read_text()
    section = text[text.index(after_heading):]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def test_the_python_api_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it saves a checkpoint into the working directory
    exec(compile(python_block("## Python API"), "README.md (Python API)", "exec"), {})
    assert (tmp_path / "checkpoints" / "mine" / "config.json").is_file()
    assert re.fullmatch(r"m[0-9a-f]{15}", capsys.readouterr().out.strip())


def shell_commands(after_heading: str) -> list[list[str]]:
    """The commands of the section's bash blocks, as argv lists (comments and line continuations removed)."""
    text = README.read_text()
    section = text[text.index(after_heading):]
    section = section[: section.find("\n## ", len(after_heading))]
    lines = "".join(re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in lines.splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_the_offline_training_commands_run_as_written(tmp_path):
    # A copy of the recipe in a fresh folder: what the commands write goes there, as in a fresh clone.
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "tiny-offline.toml", tmp_path / "configs")
    commands = shell_commands("## Train a model offline")
    assert [argv[:2] for argv in commands] == [["moodstream", "synth-corpus"], ["moodstream", "train"]]
    moodstream = Path(sys.executable).parent / "moodstream"
    fewer_epochs = ["--set", "stage1.epochs=2", "--set", "stage2.epochs=2", "--set", "run.progress=false"]
    for argv in commands:
        extra = fewer_epochs if argv[1] == "train" else []
        run = subprocess.run([str(moodstream), *argv[1:], *extra], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, f"{shlex.join(argv)}:\n{run.stderr[-3000:]}"
    assert (tmp_path / "runs" / "tiny-offline" / "checkpoint" / "config.json").is_file()
    assert (tmp_path / "runs" / "tiny-offline" / "report.md").is_file()
    assert "checkpoint:" in run.stdout and "Traceback" not in run.stderr
