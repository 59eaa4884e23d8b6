"""The one rule for files and folders a user names: on the command line (the argparse types below) and inside
the files read from there (`read_text`, `read_csv`).

A folder where a file goes, a path that does not exist, bytes that cannot be read and text that is not UTF-8
are each refused in one line that names the file (and, on the command line, the option: argparse adds
"argument --labels:"); `Parser` prints that line alone, without the usage block, and exits 2. The types check
everything that can be known before a command starts, so nothing is started for a command that must fail.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


class PathProblem(argparse.ArgumentTypeError, ValueError):
    """A path a user gave cannot be used. A ValueError too, so a command's handler may raise it as one line."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose refusal of a path is one line: the usage block says nothing about a file."""

    def error(self, message: str):
        if isinstance(getattr(sys.exc_info()[1], "__context__", None), PathProblem):
            self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")
        super().error(message)


# --------------------------------------------------------------------------- reading
def read_text(path: str | Path) -> str:
    """The whole file as text (UTF-8, a BOM allowed); PathProblem in one line naming the file otherwise."""
    data = _read_bytes(Path(path))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise PathProblem(f"{path} is not UTF-8 text (byte 0x{data[error.start]:02x} on line {line})") from None


def read_csv(path: str | Path, delimiter: str | None = None) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(column names, [(line number, row)]) of a CSV file with a header, every name and value stripped.

    The delimiter is a tab when the start of the file has more tabs than commas, unless given. A row with more
    or fewer fields than the header is refused (PathProblem naming the file and the line): its values could
    not be told apart, e.g. an unquoted comma inside a path.
    """
    text = read_text(path)
    if delimiter is None:
        sample = text[:4096]
        delimiter = "\t" if sample.count("\t") > sample.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [name.strip() for name in next(reader, [])]
        rows = []
        for fields in reader:
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                raise PathProblem(f"{path} line {reader.line_num}: {len(fields)} field(s), but the header has "
                                  f"{len(header)} (a value holding {delimiter!r} must be quoted)")
            rows.append((reader.line_num, {name: value.strip() for name, value in zip(header, fields)}))
    except csv.Error as error:
        raise PathProblem(f"{path} line {reader.line_num}: not a CSV file ({error})") from None
    return header, rows


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise PathProblem(_os_problem(path, error)) from None


def _os_problem(path: str | Path, error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return f"{path} does not exist"
    if isinstance(error, IsADirectoryError):
        return f"{path} is a folder, not a file"
    if isinstance(error, NotADirectoryError):
        return f"{path}: a part of this path is a file, not a folder"
    if isinstance(error, PermissionError):
        return f"{path} cannot be read: permission denied"
    return f"{path} cannot be read: {error.strerror or error}"


# --------------------------------------------------------------------------- argparse types
class PathOption:
    """An argparse type for a path: checks it as `kind` says and returns the text as given.

    tests/test_cli_paths.py finds every path option of every command by this type, and gives each a folder,
    a missing file and a binary file.
    """

    def __init__(self, kind: str, check, passes: tuple[str, ...] = ()) -> None:
        self.kind, self._check, self.passes = kind, check, passes
        self.__name__ = kind  # argparse names a type in its messages

    def __call__(self, text: str) -> str:
        if text not in self.passes:
            self._check(Path(text).expanduser())
        return text

    def __repr__(self) -> str:
        return f"PathOption({self.kind})"


def _existing(path: Path) -> None:
    try:
        path.stat()
    except OSError as error:
        raise PathProblem(_os_problem(path, error)) from None


def _a_file(path: Path) -> None:
    _existing(path)
    if path.is_dir():
        raise PathProblem(f"{path} is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise PathProblem(f"{path} cannot be read: permission denied")


def _a_text_file(path: Path) -> None:
    _a_file(path)
    read_text(path)


def _a_folder(path: Path) -> None:
    _existing(path)
    if not path.is_dir():
        raise PathProblem(f"{path} is a file, not a folder")


def _a_file_or_folder(path: Path) -> None:
    _existing(path)
    if not path.is_dir():
        _a_file(path)


def _an_audio_file(path: Path) -> None:
    _a_file(path)
    from moodstream.speech.audio_file import FileSource

    try:
        FileSource(path)
    except ValueError as error:  # SourceError: the file names itself in its reason
        raise PathProblem(str(error)) from None


def _a_text_file_if_any(path: Path) -> None:
    if path.exists() or path.is_symlink():
        _a_text_file(path)


def _a_new_or_replaced_file(path: Path) -> None:
    if path.is_dir():
        raise PathProblem(f"{path} is a folder, not a file")
    if not path.parent.is_dir():
        raise PathProblem(f"{path}: the folder {path.parent} does not exist")


def _a_file_in_a_makeable_folder(path: Path) -> None:
    if path.is_dir():
        raise PathProblem(f"{path} is a folder, not a file")
    _a_folder_if_any(path.parent)


def _a_folder_if_any(path: Path) -> None:
    """A folder, or a path where one can be made: every part of it that exists is a folder."""
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise PathProblem(f"{part} is a file, not a folder" if part == path else
                                  f"{path}: {part} is a file, not a folder")
            return


# Files read whole as text: recipes, CSVs, tokens, PEM certificates and keys, lists of ids.
text_file = PathOption("text file", _a_text_file)
# Read as bytes by a library of its own.
input_file = PathOption("file", _a_file)
audio_file = PathOption("audio file", _an_audio_file)
audio_file_or_stdin = PathOption("audio file or '-'", _an_audio_file, passes=("-",))
input_folder = PathOption("folder", _a_folder)
file_or_folder = PathOption("file or folder", _a_file_or_folder)
# Created when missing, read when there (a tokens file that `token create` extends).
text_file_to_extend = PathOption("text file (created if missing)", _a_text_file_if_any)
output_file = PathOption("file to write", _a_new_or_replaced_file)
output_file_anywhere = PathOption("file to write (its folder is made)", _a_file_in_a_makeable_folder)
output_folder = PathOption("folder to write", _a_folder_if_any)
cache_file = PathOption("file to write, or '' for none", _a_file_in_a_makeable_folder, passes=("",))
