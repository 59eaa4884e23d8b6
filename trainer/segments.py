"""Subject speech -> non-overlapping fixed-length segments, decoded once and cached on disk.

A session's speech spans are decoded, resampled to the model's rate, mixed
to mono, trimmed of leading/trailing silence (optional), concatenated in
order and cut into consecutive non-overlapping segments of
`segment_seconds` (7 s by default). A final shorter piece is kept when it is
at least `min_last_segment_seconds` long. Each segment inherits its session's
label in stage 1.

The cache is keyed by what produced it: the segmenter version, the
parameters, and every span with its file's path, size and modification time.
Anything else (labels, splits) is read from the dataset each time, so
relabelling never re-decodes audio.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from moodstream.trainer.data import AudioSpan, Dataset, Session

SEGMENTER_VERSION = 1


@dataclass(frozen=True)
class SegmentParams:
    sample_rate: int = 16000
    segment_seconds: float = 7.0
    min_last_segment_seconds: float = 2.0
    trim_silence: bool = True
    silence_db: float = 40.0  # frames quieter than the span's loudest frame by this much count as silence

    def validate(self) -> None:
        if self.sample_rate <= 0 or self.segment_seconds <= 0:
            raise ValueError("segment_seconds and sample_rate must be positive")
        if not 0 < self.min_last_segment_seconds <= self.segment_seconds:
            raise ValueError("min_last_segment_seconds must be in (0, segment_seconds]")


@dataclass
class SegmentedSession:
    session: Session
    segments: list[int]  # indices into SegmentStore arrays


class SegmentStore:
    """All segments of a dataset: int16 audio on disk (memory-mapped) + an index per session."""

    def __init__(self, folder: Path, dataset: Dataset, params: SegmentParams) -> None:
        self.folder = folder
        self.params = params
        index = json.loads((folder / "index.json").read_text())
        self.key = index["key"]
        self.audio = np.memmap(folder / "audio.i16", dtype=np.int16, mode="r") \
            if (folder / "audio.i16").stat().st_size else np.zeros(0, dtype=np.int16)
        offsets, lengths, owners = [], [], []
        self.sessions: list[SegmentedSession] = []
        self.failed: dict[str, str] = dict(index.get("failed", {}))
        for session in dataset.sessions:
            pieces = index["sessions"].get(session.session_id)
            if not pieces:
                if session.session_id not in self.failed:
                    self.failed[session.session_id] = "no speech segment long enough"
                continue
            first = len(offsets)
            for offset, length in pieces:
                offsets.append(offset)
                lengths.append(length)
                owners.append(len(self.sessions))
            self.sessions.append(SegmentedSession(session, list(range(first, len(offsets)))))
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.owner = np.asarray(owners, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets)

    def waveform(self, index: int) -> np.ndarray:
        start = int(self.offsets[index])
        return np.asarray(self.audio[start: start + int(self.lengths[index])], dtype=np.float32) / 32768.0

    def label(self, index: int) -> int:
        return self.sessions[int(self.owner[index])].session.label

    def session_of(self, index: int) -> Session:
        return self.sessions[int(self.owner[index])].session

    def by_id(self) -> dict[str, SegmentedSession]:
        return {s.session.session_id: s for s in self.sessions}

    def seconds(self) -> float:
        return float(self.lengths.sum()) / self.params.sample_rate


def cache_key(dataset: Dataset, params: SegmentParams) -> str:
    def stat(span: AudioSpan):
        try:
            info = os.stat(span.path)
            return [span.path, span.member, info.st_size, info.st_mtime_ns]
        except OSError:
            return [span.path, span.member, None, None]

    recipe = {
        "segmenter_version": SEGMENTER_VERSION,
        "params": asdict(params),
        "sessions": sorted([s.session_id, [stat(sp) + [sp.start, sp.end] for sp in s.spans]] for s in dataset.sessions),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:20]


def decode(path: str, member: str | None, sample_rate: int) -> np.ndarray:
    """Whole file -> float32 mono at `sample_rate`."""
    import soundfile
    import soxr

    source = path if member is None else io.BytesIO(zipfile.ZipFile(path).read(member))
    audio, rate = soundfile.read(source, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ").astype(np.float32)
    return mono


def trim_silence(wave: np.ndarray, sample_rate: int, silence_db: float) -> np.ndarray:
    """Drop leading and trailing 20 ms frames more than `silence_db` below the loudest frame."""
    frame = max(1, sample_rate // 50)
    count = len(wave) // frame
    if count < 3:
        return wave
    rms = np.sqrt(np.mean(wave[: count * frame].reshape(count, frame).astype(np.float64) ** 2, axis=1) + 1e-12)
    level = 20 * np.log10(rms)
    loud = np.nonzero(level > max(level.max() - silence_db, -70.0))[0]
    if loud.size == 0:
        return wave[:0]
    start = max(0, (loud[0] - 1) * frame)
    end = min(len(wave), (loud[-1] + 2) * frame)
    return wave[start:end]


def session_speech(session: Session, params: SegmentParams, decoded: dict) -> np.ndarray:
    pieces = []
    for span in session.spans:
        key = (span.path, span.member)
        if key not in decoded:
            decoded.clear()  # keep one file in memory: sessions rarely share files across sessions
            decoded[key] = decode(span.path, span.member, params.sample_rate)
        wave = decoded[key]
        start = 0 if span.start is None else int(round(span.start * params.sample_rate))
        end = len(wave) if span.end is None else min(len(wave), int(round(span.end * params.sample_rate)))
        piece = wave[max(0, start): end]
        if params.trim_silence:
            piece = trim_silence(piece, params.sample_rate, params.silence_db)
        if piece.size:
            pieces.append(piece)
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


def cut(length: int, params: SegmentParams) -> list[tuple[int, int]]:
    """(start, length) of each non-overlapping segment of a `length`-sample stream."""
    size = int(round(params.segment_seconds * params.sample_rate))
    minimum = int(round(params.min_last_segment_seconds * params.sample_rate))
    out = [(start, size) for start in range(0, length - size + 1, size)]
    rest = length - len(out) * size
    if rest >= minimum and rest > 0:
        out.append((len(out) * size, rest))
    return out


def build_segments(dataset: Dataset, params: SegmentParams, cache_dir: str | Path, progress: bool = True) -> SegmentStore:
    """Segment every session once; later calls with the same recipe read the cache."""
    params.validate()
    cache_dir = Path(cache_dir).expanduser()
    key = cache_key(dataset, params)
    folder = cache_dir / key
    if (folder / "index.json").is_file():
        return SegmentStore(folder, dataset, params)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
    index: dict = {"key": key, "params": asdict(params), "sessions": {}, "failed": {}}
    decoded: dict = {}
    try:
        from tqdm import tqdm

        offset = 0
        with open(staging / "audio.i16", "wb") as out:
            for session in tqdm(dataset.sessions, desc="segmenting", unit="session", disable=not progress):
                try:
                    speech = session_speech(session, params, decoded)
                except Exception as error:  # an unreadable file must not stop the others
                    index["failed"][session.session_id] = f"audio could not be decoded ({type(error).__name__}: {error})"
                    continue
                pieces = []
                for start, length in cut(len(speech), params):
                    chunk = np.clip(np.round(speech[start:start + length] * 32767.0), -32768, 32767).astype("<i2")
                    out.write(chunk.tobytes())
                    pieces.append([offset, length])
                    offset += length
                if pieces:
                    index["sessions"][session.session_id] = pieces
                else:
                    index["failed"][session.session_id] = (
                        f"only {len(speech) / params.sample_rate:.1f} s of speech, less than "
                        f"min_last_segment_seconds={params.min_last_segment_seconds}")
        (staging / "index.json").write_text(json.dumps(index))
        try:
            os.replace(staging, folder)
        except OSError:  # another process finished the same cache first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SegmentStore(folder, dataset, params)
