"""The generic manifest: a CSV of labelled recordings (or spans of them), for corpora without a reader of
their own."""
from __future__ import annotations

from pathlib import Path

from moodstream.trainer.dataset import SPLITS, AudioSpan, Dataset, Session, audio_info, read_csv_rows

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
