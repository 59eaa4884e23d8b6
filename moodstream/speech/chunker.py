"""Kept speech -> chunks of exactly `chunk_seconds` of speech (the model's segments).

The paper's model scores 7 s segments of subject-only speech (4-9 s were
swept), so a chunk is cut after a fixed amount of *kept* speech, whatever
wall-clock time it spans. Nothing disappears unreported: a last partial chunk
too short to score becomes a :class:`DroppedTail`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moodstream.wire import SAMPLE_RATE
from .vad import Piece

MIN_CHUNK_SECONDS = 4.0
MAX_CHUNK_SECONDS = 9.0


@dataclass(frozen=True)
class SpeechChunk:
    seq: int                 # production order in the session: 0, 1, 2, ...
    start_seconds: float     # session clock of the chunk's first kept sample
    pcm: bytes               # s16le mono, 16 kHz
    speech_seconds: float    # kept audio in this chunk (its length)
    dropped_seconds: float   # audio dropped since the previous chunk (silence, prompts, ...)
    vad_frames: int          # VAD frames in this chunk that voted speech
    end_seconds: float = 0.0  # session clock just after the chunk's last kept sample

    @property
    def samples(self) -> np.ndarray:
        return np.frombuffer(self.pcm, dtype="<i2")


@dataclass(frozen=True)
class DroppedTail:
    """The last partial chunk, too short to be scored, so not sent."""

    seq: int                 # the seq it would have had
    start_seconds: float
    speech_seconds: float
    min_last_chunk_seconds: float
    reason: str = "last partial chunk shorter than the minimum"


@dataclass
class _Filling:
    parts: list[np.ndarray] = field(default_factory=list)
    samples: int = 0
    start_sample: int | None = None
    end_sample: int = 0
    vad_frames: int = 0
    dropped_samples: int = 0


class Chunker:
    def __init__(
        self,
        chunk_seconds: float = 7.0,
        min_last_chunk_seconds: float = 3.0,
        *,
        first_seq: int = 0,
    ):
        if not MIN_CHUNK_SECONDS <= chunk_seconds <= MAX_CHUNK_SECONDS:
            raise ValueError(
                f"chunk length must be {MIN_CHUNK_SECONDS:g}-{MAX_CHUNK_SECONDS:g} s "
                f"(the range the model was studied on), got {chunk_seconds:g}"
            )
        if not 0 < min_last_chunk_seconds <= chunk_seconds:
            raise ValueError(
                f"minimum last chunk must be > 0 and <= the chunk length ({chunk_seconds:g} s), "
                f"got {min_last_chunk_seconds:g}"
            )
        self.chunk_seconds = float(chunk_seconds)
        self.min_last_chunk_seconds = float(min_last_chunk_seconds)
        self.chunk_samples = int(round(chunk_seconds * SAMPLE_RATE))
        self.next_seq = first_seq
        self._filling = _Filling()
        self._finished = False

    def settings(self) -> dict:
        return {
            "chunk_seconds": self.chunk_seconds,
            "min_last_chunk_seconds": self.min_last_chunk_seconds,
        }

    @property
    def buffered_seconds(self) -> float:
        return self._filling.samples / SAMPLE_RATE

    def add(self, piece: Piece) -> list[SpeechChunk]:
        if self._finished:
            raise RuntimeError("Chunker.add() after finish()")
        filling = self._filling
        if not piece.kept:
            filling.dropped_samples += piece.length
            return []
        chunks: list[SpeechChunk] = []
        samples = piece.samples
        start = piece.start_sample
        votes = int(piece.voted_speech)  # counted where the frame starts
        while len(samples):
            if filling.start_sample is None:
                filling.start_sample = start
            room = self.chunk_samples - filling.samples
            taken = samples[:room]
            filling.parts.append(taken)
            filling.samples += len(taken)
            filling.end_sample = start + len(taken)
            filling.vad_frames += votes
            votes = 0
            samples = samples[room:]
            start += len(taken)
            if filling.samples == self.chunk_samples:
                chunks.append(self._emit())
                filling = self._filling
        return chunks

    def finish(self) -> tuple[list[SpeechChunk], DroppedTail | None]:
        """End of input: the partial chunk is emitted if long enough, else reported dropped."""
        self._finished = True
        filling = self._filling
        if not filling.samples:
            return [], None
        if filling.samples >= self.min_last_chunk_seconds * SAMPLE_RATE:
            return [self._emit()], None
        tail = DroppedTail(
            seq=self.next_seq,
            start_seconds=filling.start_sample / SAMPLE_RATE,
            speech_seconds=filling.samples / SAMPLE_RATE,
            min_last_chunk_seconds=self.min_last_chunk_seconds,
        )
        self._filling = _Filling()
        return [], tail

    def _emit(self) -> SpeechChunk:
        filling = self._filling
        pcm = np.concatenate(filling.parts).astype("<i2").tobytes()
        chunk = SpeechChunk(
            seq=self.next_seq,
            start_seconds=filling.start_sample / SAMPLE_RATE,
            pcm=pcm,
            speech_seconds=filling.samples / SAMPLE_RATE,
            dropped_seconds=filling.dropped_samples / SAMPLE_RATE,
            vad_frames=filling.vad_frames,
            end_seconds=filling.end_sample / SAMPLE_RATE,
        )
        self.next_seq += 1
        self._filling = _Filling()
        return chunk
