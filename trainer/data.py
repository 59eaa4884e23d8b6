"""Labelled recordings in, subject-only speech spans out: DAIC-WOZ, E-DAIC and a generic manifest.

Every reader returns a `Dataset`: one `Session` per interview (what gets one
score), each with the speaker it belongs to (folds are disjoint on speakers),
its binary label, optional PHQ-8 score and split, and the ordered spans of
subject speech inside its audio. Problems never crash a reader: a session
that cannot be used is skipped with its reason, a usable one with a problem
keeps a warning, and `Dataset.summary_markdown()` lists both per participant.
"""
from __future__ import annotations

import csv
import io
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

SPLITS = ("train", "validation", "test")

# DESIGN §1: problems the DAIC-WOZ community's preprocessing tools document.
DAIC_KNOWN_PROBLEMS: dict[str, str] = {
    "373": "known problem: interrupted session",
    "444": "known problem: interrupted session",
    "451": "known problem: interviewer turns missing from the transcript",
    "458": "known problem: interviewer turns missing from the transcript",
    "480": "known problem: interviewer turns missing from the transcript",
    "318": "known problem: audio/transcript timing misalignment (set data.time_offsets or exclude it)",
    "321": "known problem: audio/transcript timing misalignment (set data.time_offsets or exclude it)",
    "341": "known problem: audio/transcript timing misalignment (set data.time_offsets or exclude it)",
    "362": "known problem: audio/transcript timing misalignment (set data.time_offsets or exclude it)",
    "409": "known problem: PHQ8_Binary is inconsistent with PHQ8_Score",
}
DAIC_MISSING_IDS = ("342", "394", "398", "460")


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


# --------------------------------------------------------------------------- split files
def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    sample = text[:4096]
    delimiter = "\t" if sample.count("\t") > sample.count(",") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    return [(name or "").strip() for name in (reader.fieldnames or [])], rows


def find_column(columns: list[str], *patterns: str) -> str | None:
    for pattern in patterns:
        for column in columns:
            if re.fullmatch(pattern, column, flags=re.IGNORECASE):
                return column
    return None


@dataclass
class LabelRow:
    participant: str
    split: str
    binary: int | None
    score: float | None


def read_label_file(path: Path, split: str) -> tuple[list[LabelRow], list[str]]:
    """Participant_ID + PHQ8_Binary/PHQ_Binary + PHQ8_Score/PHQ_Score (any case); problems as notes."""
    columns, rows = read_csv_rows(path)
    id_column = find_column(columns, r"participant_?id")
    binary_column = find_column(columns, r"phq8?_binary")
    score_column = find_column(columns, r"phq8?_score")
    notes: list[str] = []
    if id_column is None:
        raise ValueError(f"{path.name} has no Participant_ID column (columns: {', '.join(columns)})")
    if binary_column is None and score_column is None:
        notes.append(f"{path.name} has no PHQ-8 label columns: its participants have no labels")
    result = []
    for row in rows:
        raw_id = row.get(id_column, "")
        if not raw_id:
            continue
        participant = str(int(float(raw_id))) if re.fullmatch(r"\d+(\.0+)?", raw_id) else raw_id
        binary = score = None
        if binary_column and row.get(binary_column, "") != "":
            try:
                binary = int(float(row[binary_column]))
            except ValueError:
                notes.append(f"{path.name}: participant {participant} has a non-numeric {binary_column}")
        if score_column and row.get(score_column, "") != "":
            try:
                score = float(row[score_column])
            except ValueError:
                notes.append(f"{path.name}: participant {participant} has a non-numeric {score_column}")
        result.append(LabelRow(participant, split, binary, score))
    return result, notes


def label_from(row: LabelRow, mode: str, threshold: float) -> tuple[int | None, str | None]:
    """-> (label, warning). mode 'binary' (PHQ8_Binary) or 'score' (PHQ8_Score >= threshold)."""
    from_score = None if row.score is None else int(row.score >= threshold)
    warning = None
    if row.binary is not None and from_score is not None and row.binary != from_score:
        warning = (f"PHQ8_Binary={row.binary} disagrees with PHQ8_Score={row.score:g} "
                   f"(>= {threshold:g} gives {from_score}); using the {mode}")
    label = row.binary if mode == "binary" else from_score
    if label is None:
        label = from_score if mode == "binary" else row.binary
    if label is not None and label not in (0, 1):
        return None, f"label {label} is not 0 or 1"
    return label, warning


# --------------------------------------------------------------------------- transcripts
@dataclass
class Turn:
    start: float
    end: float
    speaker: str


def parse_transcript(text: str, start_names: tuple[str, ...], end_names: tuple[str, ...],
                     speaker_names: tuple[str, ...]) -> tuple[list[Turn], list[str]]:
    """Rows with start/end times (and a speaker column if present) -> turns + problems found."""
    sample = text[:4096]
    delimiter = "\t" if sample.count("\t") >= sample.count(",") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ValueError("transcript is empty") from None

    def index(names):
        for name in names:
            if name in header:
                return header.index(name)
        return None

    start_at, end_at, speaker_at = index(start_names), index(end_names), index(speaker_names)
    if start_at is None or end_at is None:
        raise ValueError(f"transcript header has no start/stop time columns (found: {', '.join(header)[:80]})")
    turns, problems, bad_rows = [], [], 0
    for row in reader:
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            start, end = float(row[start_at]), float(row[end_at])
        except (ValueError, IndexError):
            bad_rows += 1
            continue
        speaker = row[speaker_at].strip() if speaker_at is not None and speaker_at < len(row) else "Participant"
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            bad_rows += 1
            continue
        if end == start:
            # Zero-length rows (a backchannel or a lost timestamp) hold no audio to keep or leak.
            continue
        turns.append(Turn(start, end, speaker))
    if bad_rows:
        problems.append(f"{bad_rows} transcript rows with unreadable or decreasing times dropped")
    return turns, problems


def participant_spans(turns: list[Turn], duration: float, offset: float = 0.0) -> tuple[list[tuple[float, float]], list[str]]:
    """Participant turns -> sorted, merged, clipped spans (seconds) and the problems met on the way."""
    problems: list[str] = []
    own = sorted(((t.start + offset, t.end + offset) for t in turns if t.speaker.lower() == "participant"))
    if not own:
        return [], ["no Participant turns in the transcript"]
    out_of_range = sum(1 for start, end in own if end > duration + 0.5 or start < 0)
    if out_of_range:
        problems.append(f"{out_of_range} turns end after the audio ({duration:.1f} s) or start before it: clipped")
    spans: list[tuple[float, float]] = []
    overlaps = 0
    for start, end in own:
        start, end = max(0.0, start), min(duration, end)
        if end - start <= 0:
            continue
        if spans and start < spans[-1][1]:
            overlaps += 1
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    if overlaps:
        problems.append(f"{overlaps} overlapping Participant turns merged")
    # Interviewer speech overlapping a participant turn would leak the prompts: flag it.
    others = [(t.start + offset, t.end + offset) for t in turns if t.speaker.lower() != "participant"]
    crossing = sum(1 for a, b in others for s, e in spans if a < e and s < b)
    if crossing:
        problems.append(f"{crossing} interviewer turns overlap Participant turns (the overlap stays in)")
    if not spans:
        problems.append("every Participant turn lies outside the audio")
    return spans, problems


# --------------------------------------------------------------------------- DAIC-WOZ / E-DAIC
@dataclass
class ParticipantFiles:
    participant: str
    audio: AudioSpan | None
    transcript_text: str | None
    problems: list[str]


def _participant_entries(root: Path) -> dict[str, Path]:
    """NNN_P folders or NNN_P.zip archives up to three levels down (a folder wins over a zip)."""
    found: dict[str, Path] = {}
    for depth in range(1, 4):
        for path in sorted(root.glob("/".join(["*"] * depth))):
            match = re.fullmatch(r"(\d+)_P(\.zip)?", path.name, flags=re.IGNORECASE)
            if not match:
                continue
            participant = str(int(match.group(1)))
            if path.is_dir() and not match.group(2):
                if participant not in found or not found[participant].is_dir():
                    found[participant] = path
            elif match.group(2) and path.is_file() and participant not in found:
                found[participant] = path
    return found


def _locate_files(participant: str, entry: Path, audio_pattern: str, transcript_pattern: str) -> ParticipantFiles:
    problems: list[str] = []
    audio_re = re.compile(audio_pattern.format(id=participant), re.IGNORECASE)
    transcript_re = re.compile(transcript_pattern.format(id=participant), re.IGNORECASE)
    audio = None
    transcript_text = None
    if entry.is_dir():
        files = [p for p in entry.rglob("*") if p.is_file()]
        audio_files = [p for p in files if audio_re.fullmatch(p.name)]
        transcript_files = [p for p in files if transcript_re.fullmatch(p.name)]
        if audio_files:
            audio = AudioSpan(str(audio_files[0]))
        if transcript_files:
            try:
                transcript_text = transcript_files[0].read_text(encoding="utf-8-sig", errors="replace")
            except OSError as error:
                problems.append(f"transcript unreadable: {error}")
    else:
        try:
            with zipfile.ZipFile(entry) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
                audio_members = [n for n in names if audio_re.fullmatch(n.rsplit("/", 1)[-1])]
                transcript_members = [n for n in names if transcript_re.fullmatch(n.rsplit("/", 1)[-1])]
                if audio_members:
                    audio = AudioSpan(str(entry), member=audio_members[0])
                if transcript_members:
                    transcript_text = archive.read(transcript_members[0]).decode("utf-8-sig", errors="replace")
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            problems.append(f"archive {entry.name} is unreadable ({error})")
            return ParticipantFiles(participant, None, None, problems)
    return ParticipantFiles(participant, audio, transcript_text, problems)


def _find_file(root: Path, pattern: str) -> Path | None:
    matches = sorted(p for p in root.rglob("*") if p.is_file() and re.fullmatch(pattern, p.name, re.IGNORECASE))
    return matches[0] if matches else None


def read_daic_woz(root: str | Path, *, label_mode: str = "binary", score_threshold: float = 10.0,
                  exclude: Iterable[str] = (), time_offsets: dict[str, float] | None = None,
                  validation_split: str = "dev", variant: str = "daic-woz") -> Dataset:
    """Read DAIC-WOZ (variant 'daic-woz') or E-DAIC (variant 'e-daic') as distributed.

    DAIC-WOZ: NNN_P/ or NNN_P.zip with NNN_AUDIO.wav and NNN_TRANSCRIPT.csv
    (tab-separated start_time, stop_time, speaker, value), split files
    train_split_Depression_AVEC2017.csv, dev_split_Depression_AVEC2017.csv and
    full_test_split.csv. E-DAIC: NNN_P/NNN_AUDIO.wav with NNN_Transcript.csv
    (Start_Time, End_Time, participant only) and train_split.csv, dev_split.csv,
    test_split.csv. Only Participant speech is kept; the interviewer's is dropped.
    `validation_split` names the split used for validation ('dev'); 'none' keeps
    dev participants out of the run.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"no {variant} folder at {root}")
    exclude = {str(int(x)) if str(x).isdigit() else str(x) for x in exclude}
    offsets = {str(k): float(v) for k, v in (time_offsets or {}).items()}
    if variant == "daic-woz":
        split_patterns = {"train": r"train_split_Depression_AVEC2017\.csv", "dev": r"dev_split_Depression_AVEC2017\.csv",
                          "test": r"full_test_split\.csv"}
        fallback_test = r"test_split_Depression_AVEC2017\.csv"
        audio_pattern, transcript_pattern = r"{id}_AUDIO\.wav", r"{id}_TRANSCRIPT\.csv"
        start_names, end_names = ("start_time",), ("stop_time", "end_time")
    elif variant == "e-daic":
        split_patterns = {"train": r"train_split\.csv", "dev": r"dev_split\.csv", "test": r"test_split\.csv"}
        fallback_test = None
        audio_pattern, transcript_pattern = r"{id}_AUDIO\.wav", r"{id}_Transcript\.csv"
        start_names, end_names = ("start_time",), ("end_time", "stop_time")
    else:
        raise ValueError(f"unknown DAIC variant {variant!r}: use 'daic-woz' or 'e-daic'")

    dataset = Dataset(variant, [])
    labels: dict[str, LabelRow] = {}
    label_files: dict[str, Path] = {}
    for split, pattern in split_patterns.items():
        path = _find_file(root, pattern)
        if path is None and split == "test" and fallback_test:
            path = _find_file(root, fallback_test)
            if path is not None:
                dataset.notes.append(f"full_test_split.csv not found; {path.name} has no PHQ-8 labels, "
                                     "so test participants are skipped")
        if path is None:
            dataset.notes.append(f"no {split} split file ({pattern.replace(chr(92), '')}) under {root}")
            continue
        rows, notes = read_label_file(path, split)
        dataset.notes.extend(notes)
        for row in rows:
            if row.participant in labels:
                raise ValueError(f"participant {row.participant} is listed in two split files, "
                                 f"{label_files[row.participant]} and {path}: a participant belongs to one split; "
                                 "remove one of the rows")
            labels[row.participant] = row
            label_files[row.participant] = path
    if not labels:
        raise ValueError(f"no split files with participant labels found under {root}; "
                         f"expected {', '.join(p.replace(chr(92), '') for p in split_patterns.values())}")

    entries = _participant_entries(root)
    split_names = {"train": "train", "dev": None if validation_split == "none" else "validation", "test": "test"}
    if validation_split not in ("dev", "none"):
        raise ValueError(f"data.validation for {variant} must be 'dev' or 'none', got {validation_split!r}")
    for participant in sorted(set(labels) | set(entries), key=natural_key):
        known = DAIC_KNOWN_PROBLEMS.get(participant) if variant == "daic-woz" else None
        row = labels.get(participant)
        if participant in exclude:
            dataset.skipped[participant] = "excluded by data.exclude" + (f" ({known})" if known else "")
            continue
        if row is None:
            dataset.skipped[participant] = "recording has no row in any split file"
            continue
        split = split_names[row.split]
        if split is None:
            dataset.skipped[participant] = "dev participant, and data.validation = 'none'"
            continue
        if participant not in entries:
            reason = "listed in a split file but no NNN_P folder or NNN_P.zip was found"
            if variant == "daic-woz" and participant in DAIC_MISSING_IDS:
                reason += " (known: this id does not exist in DAIC-WOZ)"
            dataset.skipped[participant] = reason
            continue
        label, label_warning = label_from(row, label_mode, score_threshold)
        if label is None:
            dataset.skipped[participant] = label_warning or f"no PHQ-8 label in the {row.split} split file"
            continue
        files = _locate_files(participant, entries[participant], audio_pattern, transcript_pattern)
        problems = list(files.problems)
        if files.audio is None:
            dataset.skipped[participant] = "; ".join(problems + [f"no {participant}_AUDIO.wav"])
            continue
        if files.transcript_text is None:
            dataset.skipped[participant] = "; ".join(problems + ["transcript missing: the participant's speech "
                                                                  "cannot be separated from the interviewer's"])
            continue
        try:
            duration, _rate = audio_info(files.audio.path, files.audio.member)
        except ValueError as error:
            dataset.skipped[participant] = str(error)
            continue
        try:
            turns, transcript_problems = parse_transcript(files.transcript_text, start_names, end_names, ("speaker",))
        except ValueError as error:
            dataset.skipped[participant] = f"broken transcript: {error}"
            continue
        problems += transcript_problems
        if variant == "e-daic":
            turns = [Turn(t.start, t.end, "Participant") for t in turns]  # E-DAIC transcripts are participant-only
        spans, span_problems = participant_spans(turns, duration, offsets.get(participant, 0.0))
        problems += span_problems
        if participant in offsets:
            problems.append(f"time offset {offsets[participant]:+g} s applied from data.time_offsets")
        if not spans:
            dataset.skipped[participant] = "; ".join(problems) or "no participant speech"
            continue
        if label_warning:
            problems.append(label_warning)
        if known:
            problems.append(known)
        dataset.sessions.append(Session(
            session_id=participant, speaker_id=participant, label=int(label), score=row.score, split=split,
            spans=[AudioSpan(files.audio.path, start, end, files.audio.member) for start, end in spans],
            warnings=problems))
    return dataset


# --------------------------------------------------------------------------- generic manifest
MANIFEST_COLUMNS = "participant_id,label,audio_path[,start,end][,split|fold][,speaker_id][,score]"


def read_manifest(path: str | Path) -> Dataset:
    """CSV with participant_id,label,audio_path and optional start,end,split,fold,speaker_id,score.

    Several rows of one participant are its speech spans, in row order. Paths
    are relative to the manifest's folder. label is 0 or 1 (1 = the depressed
    / positive class). speaker_id defaults to participant_id; a speaker is
    never in two splits or folds (checked here and again before training).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"no manifest file at {path}")
    columns, rows = read_csv_rows(path)
    lowered = {c.lower(): c for c in columns}
    missing = [c for c in ("participant_id", "label", "audio_path") if c not in lowered]
    if missing:
        raise ValueError(f"manifest {path.name} lacks the column(s) {', '.join(missing)}; expected {MANIFEST_COLUMNS}")
    get = lambda row, name: row.get(lowered.get(name, ""), "").strip()  # noqa: E731
    dataset = Dataset(f"manifest {path.name}", [], positive_class="the manifest's label 1 (the depressed class)")
    sessions: dict[str, Session] = {}
    bad: dict[str, str] = {}
    checked_audio: dict[str, str | None] = {}
    for line, row in enumerate(rows, start=2):
        participant = get(row, "participant_id")
        if not participant:
            dataset.notes.append(f"line {line}: empty participant_id, row ignored")
            continue
        if participant in bad:
            continue
        label_text = get(row, "label").lower()
        label = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "true": 1, "false": 0}.get(label_text)
        if label is None:
            bad[participant] = f"line {line}: label {label_text!r} is not 0 or 1"
            continue
        audio = Path(get(row, "audio_path")).expanduser()
        if not audio.is_absolute():
            audio = path.parent / audio
        key = str(audio)
        if key not in checked_audio:
            try:
                checked_audio[key] = None
                duration, _ = audio_info(key)
                checked_audio[key] = f"{duration}"
            except ValueError as error:
                checked_audio[key] = None
                bad[participant] = f"line {line}: {audio.name}: {error}" if audio.exists() else \
                    f"line {line}: audio file {audio} does not exist"
                continue
        elif checked_audio[key] is None:
            bad[participant] = f"line {line}: audio file {audio.name} is missing or unreadable"
            continue
        duration = float(checked_audio[key])
        start_text, end_text = get(row, "start"), get(row, "end")
        try:
            start = float(start_text) if start_text else None
            end = float(end_text) if end_text else None
        except ValueError:
            bad[participant] = f"line {line}: start/end are not numbers"
            continue
        if start is not None and end is not None and end <= start:
            bad[participant] = f"line {line}: end {end} is not after start {start}"
            continue
        warnings = []
        if end is not None and end > duration + 0.5:
            warnings.append(f"line {line}: end {end:g} s is after the audio's end ({duration:.1f} s): clipped")
        split = get(row, "split").lower() or None
        if split == "dev":
            split = "validation"
        if split is not None and split not in SPLITS:
            bad[participant] = f"line {line}: split {split!r} is not one of {', '.join(SPLITS)} (or dev)"
            continue
        fold = get(row, "fold") or None
        speaker = get(row, "speaker_id") or participant
        score_text = get(row, "score")
        session = sessions.get(participant)
        if session is None:
            session = sessions[participant] = Session(participant, speaker, label, [], split=split, fold=fold,
                                                      score=float(score_text) if score_text else None)
        elif (session.label, session.split, session.fold, session.speaker_id) != (label, split, fold, speaker):
            bad[participant] = (f"line {line}: rows of participant {participant} disagree on label, split, fold "
                                "or speaker_id")
            continue
        session.spans.append(AudioSpan(key, start, None if end is None else min(end, duration)))
        session.warnings.extend(warnings)
    for participant, reason in bad.items():
        sessions.pop(participant, None)
        dataset.skipped[participant] = reason
    dataset.sessions = list(sessions.values())
    if not dataset.sessions:
        raise ValueError(f"manifest {path.name} has no usable rows ({len(bad)} participants skipped)")
    return dataset
