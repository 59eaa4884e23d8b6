"""The README's code runs as printed."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(after_heading: str) -> str:
    text = README.read_text()
    section = text[text.index(after_heading):]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def test_the_python_api_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it saves a checkpoint into the working directory
    exec(compile(python_block("## Python API"), "README.md (Python API)", "exec"), {})
    assert (tmp_path / "checkpoints" / "mine" / "config.json").is_file()
    assert re.fullmatch(r"m[0-9a-f]{15}", capsys.readouterr().out.strip())
