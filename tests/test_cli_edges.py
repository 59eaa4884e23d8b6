"""Command-line edges a new user hits: one-line errors, refused values, --help that shows what matters."""
import socket
import subprocess
import sys

import pytest

from moodstream.compose.cli import main

DEMO_CHECKPOINT = "moodstream/assets/demo-checkpoint"


def moodstream(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moodstream.compose.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def busy_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def one_line_error(result: subprocess.CompletedProcess, command: str, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"moodstream {command}: error:") and fragment in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("option", ["--port", "--metrics-port"])
def test_a_port_in_use_is_one_line(busy_port, option):
    result = moodstream("server", "--checkpoint", DEMO_CHECKPOINT, "--allow-unauthenticated",
                        "--redis", "redis://127.0.0.1:1", option, str(busy_port))
    one_line_error(result, "server", f"{option} {busy_port}: cannot listen on 127.0.0.1: the port is already in use")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_demo_plot_into_a_missing_folder_is_one_line(tmp_path):
    result = moodstream("demo", "--plot", str(tmp_path / "missing" / "scores.png"))
    one_line_error(result, "demo", f"argument --plot: {tmp_path / 'missing' / 'scores.png'}: the folder "
                                   f"{tmp_path / 'missing'} does not exist")


def test_an_unknown_device_is_one_line():
    result = moodstream("server", "--checkpoint", DEMO_CHECKPOINT, "--allow-unauthenticated", "--device", "tpu")
    one_line_error(result, "server", "--device 'tpu' is not supported: use auto, cpu, cuda or cuda:N")


@pytest.mark.parametrize("command", [["server", "--checkpoint", "."], ["dashboard", "--server", "h:1"]])
@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_port_outside_the_range_is_refused(capsys, command, port):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--port", port])
    assert exit_info.value.code == 2
    assert "is not a port number" in capsys.readouterr().err


@pytest.mark.parametrize("value, fragment", [("-1", "-1 is not a size in MB (a number >= 0; 0 = off)"),
                                             ("inf", "inf is not a size in MB (a number >= 0; 0 = off)"),
                                             ("lots", "'lots' is not a size in MB")])
def test_a_state_cache_size_that_is_no_size_is_refused(capsys, value, fragment):
    with pytest.raises(SystemExit) as exit_info:
        main(["server", "--checkpoint", ".", "--state-cache-mb", value])
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "0", "0.0001"])
def test_an_outbox_bound_below_one_chunk_is_answered_in_megabytes(tmp_path, value):
    result = moodstream("agent", "--server", "127.0.0.1:1", "--participant", "p1", "--outbox", str(tmp_path),
                        "--outbox-max-mb", value, "-")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"moodstream agent: --outbox-max-mb must be more than 0.000488 MB (room for "
                                     f"one chunk's bookkeeping), got {float(value):g}")


def help_text(capsys, *command: str) -> str:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_a_default_of_zero_and_hides_empty_ones(capsys):
    server = help_text(capsys, "server")
    assert "(0 = off) (default: 0)" in server  # --metrics-port: 0 equals False, yet it is a default worth showing
    assert "--log-level {debug,info,warning,error} least severe log messages to print (stderr) (default: info)" \
        in server
    for command in (["server"], ["dashboard"], ["agent"], ["token", "create"], ["forget"]):
        text = help_text(capsys, *command)
        assert "(default: )" not in text and "(default: [])" not in text, command
    dashboard = help_text(capsys, "dashboard")
    assert "least severe log messages" in dashboard


@pytest.mark.parametrize("value, fragment", [("1", "1 inner folds cannot cross-fit: give 2 or more"),
                                             ("two", "'two' is not a number of folds")])
def test_demo_checkpoint_refuses_inner_folds_that_cannot_cross_fit_before_synthesising(tmp_path, value, fragment):
    result = moodstream("demo-checkpoint", "--work", str(tmp_path / "work"), "--output", str(tmp_path / "out"),
                        "--inner-folds", value)
    one_line_error(result, "demo-checkpoint", f"argument --inner-folds: {fragment}")
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("speakers, fragment", [("20", "argument --speakers: must be at least 24"),
                                                ("500", "argument --speakers: can be at most 191"),
                                                ("many", "argument --speakers: 'many' is not a number")])
def test_demo_checkpoint_refuses_a_corpus_it_cannot_split_before_writing_anything(tmp_path, speakers, fragment):
    result = moodstream("demo-checkpoint", "--work", str(tmp_path / "work"), "--output", str(tmp_path / "out"),
                        "--speakers", speakers)
    one_line_error(result, "demo-checkpoint", fragment)
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()
