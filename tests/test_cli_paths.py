"""Every path option of every command, found by introspecting the `moodstream` parser: a folder, a missing file
and a binary file each get one line that names the option and the path (exit 2), never a traceback; and the
files read from there (CSV tables, prompt intervals) name the file and the line."""
from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from moodstream.compose.cli import build_parser
from moodstream.user_files import PathOption, PathProblem, read_csv, read_text

BINARY = bytes(range(256)) * 4  # not UTF-8, not audio, not a folder
# The last word of an option's name or metavar when it names a path: such an option must have a PathOption type.
PATH_WORDS = re.compile(r"(^|-)(file|dir|folder|csv|png|checkpoint|export|config|output|out|data|labels|base|tokens|"
                        r"ca|cert|key|audio|prompts|plot|qr|cache|source|models|outbox|whisper|work)$", re.IGNORECASE)
# Runs the parser on each command line in one process: each must stop at argument checking (nothing starts), and
# what it prints is the command's own output.
PARSE_EACH = """
import contextlib, io, json, sys, traceback
from moodstream.compose.cli import build_parser
outcomes = []
for argv in json.load(sys.stdin):
    err = io.StringIO()
    code = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        try:
            build_parser().parse_args(argv)
            print("parsed: the command would run")
        except SystemExit as exit:
            code = exit.code
        except BaseException:
            traceback.print_exc()
    outcomes.append([code, err.getvalue()])
json.dump(outcomes, sys.stdout)
"""


def moodstream(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moodstream.compose.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(the words that name a command, its parser) for every command that runs something."""
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        yield words, parser
    for action in subcommands:
        for name, subparser in action.choices.items():
            yield from commands(subparser, (*words, name))


def option_name(action: argparse.Action) -> str:
    return action.option_strings[0] if action.option_strings else (action.metavar or action.dest)


def accepted(action: argparse.Action, value: str) -> bool:
    try:
        action.type(value)
    except PathProblem:
        return False
    return True


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probes")
    (root / "a-folder").mkdir()
    (root / "binary.dat").write_bytes(BINARY)
    (root / "text.txt").write_text("a,b\n1,2\n")
    return {"folder": root / "a-folder", "missing file": root / "missing.txt", "binary file": root / "binary.dat",
            "text file": root / "text.txt", "new path": root / "new-folder"}


def cases(probes: dict[str, Path]):
    """(argv, option name, probe) for every path option and every probe its type refuses."""
    for words, parser in commands(build_parser()):
        positionals = [a for a in parser._actions if not a.option_strings]
        for action in parser._actions:
            if not isinstance(action.type, PathOption):
                continue
            before = []
            if not action.option_strings:  # earlier positionals get a value they accept
                for earlier in positionals[:positionals.index(action)]:
                    valid = [str(p) for p in probes.values() if not isinstance(earlier.type, PathOption)
                             or accepted(earlier, str(p))]
                    before.append(valid[0] if isinstance(earlier.type, PathOption) else "x")
            for kind in ("folder", "missing file", "binary file"):
                value = str(probes[kind])
                if accepted(action, value):
                    continue  # e.g. a folder for a folder option: the command would run
                given = [*before, value] if not action.option_strings else [action.option_strings[0], value]
                yield [*words, *given], " ".join(words), option_name(action), value


def test_every_path_option_refuses_a_folder_a_missing_file_and_a_binary_file_in_one_line(probes):
    todo = list(cases(probes))
    options = {(command, option) for _, command, option, _ in todo}
    # The commands' own path options are all there (a spot check that the walk finds them).
    for expected in [("train", "--labels"), ("train", "config"), ("evaluate", "data"), ("token create", "--tokens"),
                     ("server", "--tls-key"), ("dashboard", "--token-file"), ("demo", "--prompts"),
                     ("agent", "FILE"), ("model init", "output"), ("export", "OUT")]:
        assert expected in options, expected

    run = subprocess.run([sys.executable, "-c", PARSE_EACH], input=json.dumps([argv for argv, *_ in todo]),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    failures = []
    for (argv, command, option, value), (code, printed) in zip(todo, json.loads(run.stdout)):
        lines = printed.strip().splitlines()
        ok = (code == 2 and len(lines) == 1 and "Traceback" not in printed
              and lines[0].startswith(f"moodstream {command}: error: argument {option}: ") and value in lines[0])
        if not ok:
            failures.append(f"{' '.join(argv)} -> {code}: {printed.strip()[-400:]}")
    assert not failures, "\n".join(failures)
    # The same through the installed command, for one case per kind of path.
    for argv, command, option, value in todo[:: max(1, len(todo) // 4)]:
        result = moodstream(*argv)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().startswith(f"moodstream {command}: error: argument {option}: "), result.stderr


def test_every_option_that_names_a_path_checks_it_as_one():
    unchecked = []
    for words, parser in commands(build_parser()):
        for action in parser._actions:
            if action.nargs == 0:
                continue  # a switch, e.g. --tls (the system's CAs)
            names = [*(o.lstrip("-") for o in action.option_strings), action.dest.replace("_", "-"),
                     str(action.metavar or "")]
            if any(PATH_WORDS.search(name) for name in names) and not isinstance(action.type, PathOption):
                unchecked.append(f"{' '.join(words)} {option_name(action)}")
    assert not unchecked, f"path options without a PathOption type: {unchecked}"


def test_a_missing_tls_key_is_one_line_naming_the_option(tmp_path):
    cert = tmp_path / "server.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    result = moodstream("server", "--checkpoint", str(tmp_path), "--allow-unauthenticated", "--tls-cert", str(cert),
                        "--tls-key", str(tmp_path / "server.key"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"moodstream server: error: argument --tls-key: {tmp_path / 'server.key'} does not exist"


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_bytes("participant_id,phq8_score\n1,4\nJos\u00e9,12\n".encode("latin-1"))
    with pytest.raises(PathProblem, match=re.escape(f"{labels} is not UTF-8 text (byte 0xe9 on line 3)")):
        read_text(labels)
    result = moodstream("train", "--from-export", str(tmp_path), "--labels", str(labels))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"moodstream train: error: argument --labels: {labels} is not UTF-8 text "
                                     "(byte 0xe9 on line 3)")


def test_a_csv_row_of_the_wrong_width_names_the_file_and_the_line(tmp_path):
    from moodstream.trainer.from_export import read_labels
    from moodstream.trainer.manifest import read_manifest

    labels = tmp_path / "labels.csv"
    labels.write_text("session_id,phq8_score\ns1,4\ns2,12,extra\n")
    with pytest.raises(ValueError, match=re.escape(f"{labels} line 3: 3 field(s), but the header has 2")):
        read_labels(labels, 10.0)
    manifest = tmp_path / "manifest.csv"
    # An unquoted comma inside a path.
    manifest.write_text("participant_id,label,audio_path\np1,0,a.wav\n\np2,1,my,recording.wav\n")
    with pytest.raises(ValueError, match=re.escape(f"{manifest} line 4: 4 field(s), but the header has 3")):
        read_manifest(manifest)
    short = tmp_path / "short.csv"
    short.write_text("participant_id,label,audio_path\np1,0\n")
    with pytest.raises(ValueError, match=re.escape(f"{short} line 2: 2 field(s)")):
        read_manifest(short)
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('participant_id,label,audio_path\np1,0,"my,recording.wav"\n')
    assert read_csv(quoted) == (["participant_id", "label", "audio_path"],
                                [(2, {"participant_id": "p1", "label": "0", "audio_path": "my,recording.wav"})])


def test_a_binary_manifest_is_one_line_naming_it(tmp_path):
    from moodstream.trainer.manifest import read_manifest

    binary = tmp_path / "data.csv"
    binary.write_bytes(BINARY)
    with pytest.raises(ValueError, match=re.escape(f"{binary} is not UTF-8 text")):
        read_manifest(binary)


def test_demo_prompts_that_are_not_utf8_end_it_in_one_line_before_it_starts(tmp_path):
    audio = tmp_path / "speech.wav"
    soundfile.write(audio, np.zeros(16000, dtype=np.float32), 16000)
    prompts = tmp_path / "prompts.csv"
    prompts.write_bytes("0.0 1.5 # \u00e9\n".encode("latin-1"))
    result = moodstream("demo", "--audio", str(audio), "--prompts", str(prompts))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"moodstream demo: error: argument --prompts: {prompts} is not UTF-8 text "
                                     "(byte 0xe9 on line 1)")


def test_a_taken_dashboard_port_is_named_as_such_before_the_demo_starts():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        result = moodstream("demo", "--dashboard", "--dashboard-port", str(port))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"moodstream demo: error: --dashboard-port {port}: cannot listen on 127.0.0.1: "
                                     "the port is already in use")
    assert "redis" not in result.stdout and time.monotonic() - started < 8
