"""The moodstream command: --help on every subcommand, one-sentence errors."""
import re
import subprocess
import sys

import pytest

from moodstream.compose.cli import build_parser, main


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: moodstream " + command in out
    # A default is shown once, and only when there is one to show.
    flat = " ".join(out.split())
    assert "(default: None)" not in flat
    assert not re.search(r"\(default: [^)]*\) \(default:", flat)


def test_model_init_and_info_round_trip(tmp_path, capsys):
    assert main(["model", "init", "--tiny", str(tmp_path / "ckpt")]) == 0
    assert "mean nothing until it is trained" in capsys.readouterr().out
    assert main(["model", "info", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    assert '"model_version": "m' in out and "not a diagnosis" in out


def test_missing_checkpoint_is_one_line_on_stderr(tmp_path):
    result = subprocess.run([sys.executable, "-m", "moodstream.compose.cli", "model", "info", str(tmp_path / "none")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.strip() == f"moodstream model info: error: argument checkpoint: {tmp_path / 'none'} does not exist"


def test_model_export_onnx_writes_the_graph_the_server_runs(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    assert main(["model", "init", "--tiny", str(tmp_path / "ckpt")]) == 0
    capsys.readouterr()
    assert main(["model", "export-onnx", str(tmp_path / "ckpt"), str(tmp_path / "encoder.onnx"), "--int8"]) == 0
    out = capsys.readouterr().out
    assert "encoder.onnx" in out and "encoder.int8.onnx" in out and "'segment_vectors'" in out
    import onnx

    graph = onnx.load(str(tmp_path / "encoder.onnx")).graph
    assert [i.name for i in graph.input] == ["waveforms"] and [o.name for o in graph.output] == ["segment_vectors"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert len(dims) == 2 and all(d.dim_param for d in dims)  # dynamic batch and length
