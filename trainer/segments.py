"""Subject speech -> the agent's chunks (the model's segments), decoded once and cached on disk.

A session's speech spans are decoded the way the agent reads a file (16 kHz
mono int16), concatenated in order and run through the agent's speech path
(`moodstream.speech.path`: webrtcvad speech keeping with onset,
hangover and warm-up, then the chunker and its last-partial-chunk policy),
so the trainer and `moodstream evaluate` score exactly the chunks a live
agent would send for the same audio. Each segment inherits its session's
label in stage 1.

The cache is keyed by what produced it: the segmenter version, the speech
settings, and every span with its file's path, size and modification time.
Anything else (labels, splits) is read from the dataset each time, so
relabelling never re-decodes audio.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from moodstream.speech import CaptureSettings, FileSource, SourceError, capture_chunks
from moodstream.wire import SAMPLE_RATE
from moodstream.trainer.dataset import AudioSpan, Dataset, Session

SEGMENTER_VERSION = 2


@dataclass(frozen=True)
class SegmentParams:
    speech: CaptureSettings = field(default_factory=CaptureSettings)

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def validate(self) -> None:
        self.speech.validate()


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

    def pcm(self, index: int) -> np.ndarray:
        start = int(self.offsets[index])
        return np.asarray(self.audio[start: start + int(self.lengths[index])], dtype=np.int16)

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


class AudioUnreadable(ValueError):
    """A span's audio file cannot be decoded (truncated, corrupt, missing)."""


def decode(path: str, member: str | None) -> np.ndarray:
    """A whole file (or zip member) as the agent reads it: 16 kHz mono int16."""
    name = Path(path).name if member is None else f"{Path(path).name}:{member}"
    try:
        if member is None:
            return _read_all(FileSource(path))
        with tempfile.TemporaryDirectory(prefix="moodstream-member-") as folder:
            local = Path(folder) / Path(member).name
            with zipfile.ZipFile(path) as archive:
                local.write_bytes(archive.read(member))
            return _read_all(FileSource(local))
    except SourceError as error:
        reason = str(error).rsplit(": ", 1)[-1] if str(error).startswith("cannot read") else str(error)
        raise AudioUnreadable(f"{name}: {reason}") from None
    except (zipfile.BadZipFile, OSError, KeyError) as error:
        raise AudioUnreadable(f"{name}: {error}") from None


def _read_all(source: FileSource) -> np.ndarray:
    blocks = list(source)
    return np.concatenate(blocks) if blocks else np.zeros(0, np.int16)


def session_audio(session: Session, decoded: dict | None = None) -> np.ndarray:
    """The session's speech spans, in order, as one 16 kHz int16 stream (what an agent would hear)."""
    decoded = {} if decoded is None else decoded
    pieces = []
    for span in session.spans:
        key = (span.path, span.member)
        if key not in decoded:
            decoded.clear()  # keep one file in memory: sessions rarely share files across sessions
            decoded[key] = decode(span.path, span.member)
        wave = decoded[key]
        start = 0 if span.start is None else int(round(span.start * SAMPLE_RATE))
        end = len(wave) if span.end is None else min(len(wave), int(round(span.end * SAMPLE_RATE)))
        if end > max(0, start):
            pieces.append(wave[max(0, start): end])
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)


def session_chunks(audio: np.ndarray, params: SegmentParams):
    """The agent's chunks for a session's audio (`moodstream.speech.path.capture_chunks`)."""
    return capture_chunks([audio], params.speech)


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
                    audio = session_audio(session, decoded)
                except AudioUnreadable as error:  # an unreadable file must not stop the others
                    index["failed"][session.session_id] = f"audio unreadable: {error}"
                    continue
                capture = session_chunks(audio, params)
                pieces = []
                for chunk in capture.chunks:
                    out.write(chunk.pcm)
                    pieces.append([offset, len(chunk.pcm) // 2])
                    offset += len(chunk.pcm) // 2
                if pieces:
                    index["sessions"][session.session_id] = pieces
                else:
                    index["failed"][session.session_id] = (
                        f"only {capture.kept_seconds:.1f} s of speech kept by the VAD (of "
                        f"{len(audio) / SAMPLE_RATE:.1f} s of audio), less than "
                        f"speech.min_last_chunk_seconds={params.speech.min_last_chunk_seconds:g}")
        (staging / "index.json").write_text(json.dumps(index))
        try:
            os.replace(staging, folder)
        except OSError:  # another process finished the same cache first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SegmentStore(folder, dataset, params)
