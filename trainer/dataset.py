"""What every dataset reader returns: `Dataset`, one `Session` per interview (what gets one score), each
with the speaker it belongs to (folds are disjoint on speakers), its binary label, optional PHQ-8 score and
split, and the ordered spans of subject speech inside its audio; and the audio and CSV access they share.

Problems never crash a reader: a session that cannot be used is skipped with its reason, a usable one with a
problem keeps a warning, and `Dataset.summary_markdown()` lists both per participant.
"""
from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from moodstream.user_files import read_csv

SPLITS = ("train", "validation", "test")

@dataclass(frozen=True)
class AudioSpan:
    """A piece of subject speech: `path` (or `member` inside the zip at `path`), seconds [start, end)."""

    path: str
    start: float | None = None
    end: float | None = None
    member: str | None = None


@dataclass
class Session:
    session_id: str
    speaker_id: str
    label: int
    spans: list[AudioSpan]
    score: float | None = None
    split: str | None = None
    fold: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class Dataset:
    name: str
    sessions: list[Session]
    skipped: dict[str, str] = field(default_factory=dict)   # session id -> reason
    notes: list[str] = field(default_factory=list)
    positive_class: str = "depressed"  # what label 1 means, in reports

    def warnings(self) -> dict[str, list[str]]:
        return {s.session_id: list(s.warnings) for s in self.sessions if s.warnings}

    def summary(self) -> dict:
        labels = [s.label for s in self.sessions]
        return {
            "dataset": self.name,
            "sessions": len(self.sessions),
            "speakers": len({s.speaker_id for s in self.sessions}),
            "positive": int(sum(labels)),
            "negative": int(len(labels) - sum(labels)),
            "by_split": {split: sum(1 for s in self.sessions if s.split == split)
                         for split in sorted({s.split for s in self.sessions if s.split})},
            "skipped": dict(self.skipped),
            "warnings": self.warnings(),
            "notes": list(self.notes),
        }

    def summary_markdown(self) -> str:
        info = self.summary()
        lines = [f"## Data: {self.name}", "",
                 f"{info['sessions']} sessions from {info['speakers']} speakers "
                 f"({info['positive']} positive, {info['negative']} negative); "
                 f"{len(self.skipped)} skipped.", ""]
        if info["by_split"]:
            lines += ["| split | sessions |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in info["by_split"].items()] + [""]
        for note in self.notes:
            lines.append(f"* {note}")
        if self.notes:
            lines.append("")
        if self.skipped:
            lines += ["### Skipped", "", "| id | reason |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in sorted(self.skipped.items(), key=lambda kv: natural_key(kv[0]))]
            lines.append("")
        warnings = self.warnings()
        if warnings:
            lines += ["### Used, with warnings", "", "| id | warnings |", "|---|---|"]
            lines += [f"| {k} | {'; '.join(v)} |" for k, v in sorted(warnings.items(), key=lambda kv: natural_key(kv[0]))]
            lines.append("")
        return "\n".join(lines)

    def select(self, keep: Iterable[str]) -> "Dataset":
        keep = set(keep)
        return Dataset(self.name, [s for s in self.sessions if s.session_id in keep], dict(self.skipped),
                       list(self.notes), self.positive_class)


def natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


# --------------------------------------------------------------------------- audio access
def audio_info(path: str, member: str | None = None) -> tuple[float, int]:
    """(duration seconds, sample rate) from the file's header; ValueError("audio unreadable: ...") if unusable."""
    import soundfile

    try:
        if member is None:
            info = soundfile.info(path)
            with open(path, "rb") as handle:
                missing = wav_missing_bytes(handle)
        else:
            with zipfile.ZipFile(path) as archive:
                data = archive.read(member)
            info = soundfile.info(io.BytesIO(data))
            missing = wav_missing_bytes(io.BytesIO(data))
    except Exception as error:  # soundfile and zipfile raise their own error types
        reason = str(error).strip()
        if "Error opening" in reason and ": " in reason:
            reason = reason.rsplit(": ", 1)[-1]  # libsndfile repeats the path before its reason
        raise ValueError(f"audio unreadable: {reason[:160] or type(error).__name__}") from error
    if missing:
        raise ValueError(f"audio unreadable: the WAV file is truncated ({missing:,} bytes of its sample data "
                         "are missing)")
    if info.frames <= 0:
        raise ValueError("audio unreadable: the file holds no samples")
    return info.frames / info.samplerate, info.samplerate


def wav_missing_bytes(handle) -> int:
    """How many bytes of sample data a RIFF/WAVE file's header declares beyond its end (0 if complete
    or not a WAV): libsndfile reads a truncated WAV without complaint, as if it were shorter."""
    header = handle.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return 0
    while True:
        chunk = handle.read(8)
        if len(chunk) < 8:
            return 0
        size = int.from_bytes(chunk[4:8], "little")
        if chunk[:4] == b"data":
            start = handle.tell()
            handle.seek(0, io.SEEK_END)
            available = handle.tell() - start
            # 0xFFFFFFFF is the "size unknown" marker of streamed WAVs: nothing to compare with.
            return 0 if size == 0xFFFFFFFF else max(0, size - available)
        handle.seek(size + (size & 1), io.SEEK_CUR)


# --------------------------------------------------------------------------- CSV files
def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    columns, rows = read_csv(path)
    return columns, [row for _, row in rows]


def find_column(columns: list[str], *patterns: str) -> str | None:
    for pattern in patterns:
        for column in columns:
            if re.fullmatch(pattern, column, flags=re.IGNORECASE):
                return column
    return None
