"""DAIC-WOZ and E-DAIC as distributed: split files with PHQ-8 labels, one folder or zip per participant with
the interview's audio and its transcript; only the participant's speech is kept."""
from __future__ import annotations

import csv
import io
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from moodstream.trainer.dataset import AudioSpan, Dataset, Session, audio_info, find_column, natural_key, read_csv_rows

# Problems the DAIC-WOZ community's preprocessing tools document (docs/training.md).
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
class DaicLayout:
    """How one variant names its files and transcript columns."""

    split_files: dict[str, str]        # split -> file name pattern
    fallback_test: str | None          # a test split file without labels, used to say why test is empty
    audio: str                         # file name pattern; {id} is the participant
    transcript: str
    start_columns: tuple[str, ...]
    end_columns: tuple[str, ...]
    participant_only: bool             # the transcript holds the participant's turns alone


DAIC_LAYOUTS = {
    "daic-woz": DaicLayout(
        split_files={"train": r"train_split_Depression_AVEC2017\.csv", "dev": r"dev_split_Depression_AVEC2017\.csv",
                     "test": r"full_test_split\.csv"},
        fallback_test=r"test_split_Depression_AVEC2017\.csv", audio=r"{id}_AUDIO\.wav",
        transcript=r"{id}_TRANSCRIPT\.csv", start_columns=("start_time",), end_columns=("stop_time", "end_time"),
        participant_only=False),
    "e-daic": DaicLayout(
        split_files={"train": r"train_split\.csv", "dev": r"dev_split\.csv", "test": r"test_split\.csv"},
        fallback_test=None, audio=r"{id}_AUDIO\.wav", transcript=r"{id}_Transcript\.csv",
        start_columns=("start_time",), end_columns=("end_time", "stop_time"), participant_only=True),
}


# --------------------------------------------------------------------------- split files
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


# --------------------------------------------------------------------------- participant folders
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


def _read_labels(root: Path, layout: DaicLayout, dataset: Dataset) -> dict[str, LabelRow]:
    """Every participant's label row from the split files; what is missing goes into dataset.notes."""
    labels: dict[str, LabelRow] = {}
    label_files: dict[str, Path] = {}
    for split, pattern in layout.split_files.items():
        path = _find_file(root, pattern)
        if path is None and split == "test" and layout.fallback_test:
            path = _find_file(root, layout.fallback_test)
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
                         f"expected {', '.join(p.replace(chr(92), '') for p in layout.split_files.values())}")
    return labels


def _read_session(participant: str, row: LabelRow, split: str, entry: Path, layout: DaicLayout, *, label: int,
                  offset: float | None, warnings: list[str]) -> Session | str:
    """The participant's session from its folder or zip, or why it cannot be used."""
    files = _locate_files(participant, entry, layout.audio, layout.transcript)
    problems = list(files.problems)
    if files.audio is None:
        return "; ".join(problems + [f"no {participant}_AUDIO.wav"])
    if files.transcript_text is None:
        return "; ".join(problems + ["transcript missing: the participant's speech cannot be separated from the "
                                     "interviewer's"])
    try:
        duration, _rate = audio_info(files.audio.path, files.audio.member)
    except ValueError as error:
        return str(error)
    try:
        turns, transcript_problems = parse_transcript(files.transcript_text, layout.start_columns,
                                                      layout.end_columns, ("speaker",))
    except ValueError as error:
        return f"broken transcript: {error}"
    problems += transcript_problems
    if layout.participant_only:
        turns = [Turn(t.start, t.end, "Participant") for t in turns]
    spans, span_problems = participant_spans(turns, duration, offset or 0.0)
    problems += span_problems
    if offset is not None:
        problems.append(f"time offset {offset:+g} s applied from data.time_offsets")
    if not spans:
        return "; ".join(problems) or "no participant speech"
    return Session(session_id=participant, speaker_id=participant, label=label, score=row.score, split=split,
                   spans=[AudioSpan(files.audio.path, start, end, files.audio.member) for start, end in spans],
                   warnings=problems + warnings)


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
    if variant not in DAIC_LAYOUTS:
        raise ValueError(f"unknown DAIC variant {variant!r}: use 'daic-woz' or 'e-daic'")
    layout = DAIC_LAYOUTS[variant]
    exclude = {str(int(x)) if str(x).isdigit() else str(x) for x in exclude}
    offsets = {str(k): float(v) for k, v in (time_offsets or {}).items()}
    dataset = Dataset(variant, [])
    labels = _read_labels(root, layout, dataset)
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
        session = _read_session(participant, row, split, entries[participant], layout, label=int(label),
                                offset=offsets.get(participant),
                                warnings=[w for w in (label_warning, known) if w])
        if isinstance(session, str):
            dataset.skipped[participant] = session
        else:
            dataset.sessions.append(session)
    return dataset
