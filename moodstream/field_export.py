"""The field export: what `moodstream export` writes from Redis and what the trainer reads back.

    OUT/
      sessions.parquet   one row per session (SESSION_COLUMNS)
      segments.parquet   one row per segment (SEGMENT_COLUMNS); `vector` is the segment vector (float32)
      export.json        format and version, when, from which filters, counts, the screening notice

Parquet through pyarrow, so a data scientist opens it directly
(`pandas.read_parquet("OUT/segments.parquet")`, or `pyarrow.parquet.read_table`). No audio is ever
exported: segment vectors are what the server keeps. Torch-free.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "moodstream-field-export"
FORMAT_VERSION = 1
SESSIONS_FILE = "sessions.parquet"
SEGMENTS_FILE = "segments.parquet"
MANIFEST_FILE = "export.json"

# name -> (meaning), in file order; the types are in _schemas().
SESSION_COLUMNS = {
    "session_id": "the session id the agent sent",
    "participant_id": "the participant id the agent sent",
    "device_id": "the device that recorded it",
    "model_version": "the model whose encoder made the vectors (and whose head scored them)",
    "started_unix": "when the session started (server clock, Unix seconds)",
    "ended_unix": "when End was received; null while open or interrupted",
    "state": "open, ended or interrupted at export time",
    "segments": "segments applied",
    "speech_seconds": "speech kept in the session",
    "probability": "the latest score's probability (the served model's; a screening aid, not a diagnosis)",
}
SEGMENT_COLUMNS = {
    "session_id": "",
    "participant_id": "",
    "model_version": "",
    "seq": "the chunk's sequence number in its session (0, 1, ...)",
    "vector": "the segment vector (float32 list)",
    "start_seconds": "when the chunk's speech was recorded, on the session clock; null if its update expired",
    "speech_seconds": "speech kept in the session up to and including this segment; null likewise",
    "time_unix": "when the server scored it; null likewise",
    "probability": "the session score after this segment; null likewise",
}


@dataclass
class ExportedSession:
    session_id: str
    participant_id: str
    device_id: str
    model_version: str
    started_unix: float
    ended_unix: float | None
    state: str
    segments: int
    speech_seconds: float
    probability: float | None
    seqs: list[int] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    start_seconds: list[float | None] = field(default_factory=list)
    cumulative_speech: list[float | None] = field(default_factory=list)
    times: list[float | None] = field(default_factory=list)
    probabilities: list[float | None] = field(default_factory=list)

    def vector_matrix(self) -> np.ndarray:
        """The session's segment vectors in seq order, [n, D] float32."""
        return np.stack(self.vectors).astype(np.float32) if self.vectors else np.zeros((0, 0), np.float32)


def _schemas():
    import pyarrow as pa

    sessions = pa.schema([("session_id", pa.string()), ("participant_id", pa.string()), ("device_id", pa.string()),
                          ("model_version", pa.string()), ("started_unix", pa.float64()),
                          ("ended_unix", pa.float64()), ("state", pa.string()), ("segments", pa.int64()),
                          ("speech_seconds", pa.float64()), ("probability", pa.float64())])
    segments = pa.schema([("session_id", pa.string()), ("participant_id", pa.string()),
                          ("model_version", pa.string()), ("seq", pa.int64()), ("vector", pa.list_(pa.float32())),
                          ("start_seconds", pa.float64()), ("speech_seconds", pa.float64()),
                          ("time_unix", pa.float64()), ("probability", pa.float64())])
    return sessions, segments


def write_export(out: str | Path, sessions: list[ExportedSession], filters: dict[str, Any]) -> dict:
    """Write the export folder atomically (beside it, then renamed); refuses an existing OUT."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = Path(out)
    if target.exists():
        raise ValueError(f"{target} exists: choose a new folder for the export (nothing was written)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    session_schema, segment_schema = _schemas()
    try:
        session_rows = {name: [getattr(s, name) for s in sessions] for name in SESSION_COLUMNS}
        pq.write_table(pa.Table.from_pydict(session_rows, schema=session_schema), staging / SESSIONS_FILE)
        segment_rows: dict[str, list] = {name: [] for name in SEGMENT_COLUMNS}
        for s in sessions:
            count = len(s.seqs)
            for name in ("session_id", "participant_id", "model_version"):
                segment_rows[name] += [getattr(s, name)] * count
            segment_rows["seq"] += s.seqs
            segment_rows["vector"] += [np.asarray(v, dtype=np.float32) for v in s.vectors]
            segment_rows["start_seconds"] += s.start_seconds
            segment_rows["speech_seconds"] += s.cumulative_speech
            segment_rows["time_unix"] += s.times
            segment_rows["probability"] += s.probabilities
        pq.write_table(pa.Table.from_pydict(segment_rows, schema=segment_schema), staging / SEGMENTS_FILE)
        from moodstream import SCREENING_NOTICE

        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "exported_unix": time.time(),
                    "filters": filters, "sessions": len(sessions),
                    "segments": sum(len(s.seqs) for s in sessions),
                    "speech_seconds": sum(s.speech_seconds for s in sessions),
                    "model_versions": sorted({s.model_version for s in sessions}),
                    "columns": {"sessions": SESSION_COLUMNS, "segments": SEGMENT_COLUMNS},
                    "notice": SCREENING_NOTICE}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def read_export(folder: str | Path) -> tuple[dict, list[ExportedSession]]:
    """(manifest, sessions with their vectors in seq order) of an export folder."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder} is not a moodstream export (no {MANIFEST_FILE}): pass the folder "
                         "`moodstream export` wrote") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"{manifest_path} is unreadable ({error})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder} is not a moodstream export of format {FORMAT_VERSION}")
    try:
        session_table = pq.read_table(folder / SESSIONS_FILE).to_pylist()
        segment_table = pq.read_table(folder / SEGMENTS_FILE).to_pylist()
    except (OSError, ValueError) as error:
        raise ValueError(f"{folder} holds an unreadable Parquet file ({error}); export again") from None
    sessions = {row["session_id"]: ExportedSession(**row) for row in session_table}
    for row in sorted(segment_table, key=lambda r: (r["session_id"], r["seq"])):
        session = sessions.get(row["session_id"])
        if session is None:
            raise ValueError(f"{folder}: segment of session {row['session_id']!r}, which sessions.parquet lacks")
        session.seqs.append(row["seq"])
        session.vectors.append(np.asarray(row["vector"], dtype=np.float32))
        session.start_seconds.append(row["start_seconds"])
        session.cumulative_speech.append(row["speech_seconds"])
        session.times.append(row["time_unix"])
        session.probabilities.append(row["probability"])
    return manifest, list(sessions.values())
