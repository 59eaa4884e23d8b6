"""The one speech path: which audio is kept and how it is cut into chunks (the model's segments).

The agent, the trainer and `moodstream evaluate` all run a session's audio
through :func:`capture_chunks` with the same :class:`CaptureSettings`, so a
model is trained and validated on exactly the chunks a live agent sends.
A checkpoint records the settings it was trained with (``config.json`` field
``model.speech``); a server hands them to agents (``GetModelInfo``).

Torch-free and part of the core: the agent, the trainer and the server import it
(docs/speech-path.md).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .chunker import Chunker, DroppedTail, SpeechChunk
from moodstream.settings import SettingError, checked
from moodstream.wire import SAMPLE_RATE

from .vad import DEFAULT_WARMUP_MS, PromptGate, SpeechFilter


@dataclass(frozen=True)
class CaptureSettings:
    chunk_seconds: float = 7.0
    min_last_chunk_seconds: float = 3.0
    vad_aggressiveness: int = 2
    frame_ms: int = 30
    hangover_ms: int = 300
    onset_ms: int = 60
    warmup_ms: int = DEFAULT_WARMUP_MS
    echo_tail_seconds: float = 0.3

    def speech_filter(self, gate: PromptGate | None, first_sample: int = 0) -> SpeechFilter:
        return SpeechFilter(
            aggressiveness=self.vad_aggressiveness, frame_ms=self.frame_ms,
            hangover_ms=self.hangover_ms, onset_ms=self.onset_ms, warmup_ms=self.warmup_ms, gate=gate,
            first_sample=first_sample,
        )

    def chunker(self, first_seq: int = 0) -> Chunker:
        return Chunker(self.chunk_seconds, self.min_last_chunk_seconds, first_seq=first_seq)

    def validate(self) -> "CaptureSettings":
        """Raises ValueError naming the bad setting; returns self. The ranges are the VAD's, the gate's and
        the chunker's own, so settings and the components they build can never disagree."""
        try:
            checked(self.as_dict(), type(self))
        except SettingError as error:
            raise ValueError(f"speech setting {error}") from None
        PromptGate(echo_tail_seconds=self.echo_tail_seconds)
        self.chunker()
        self.speech_filter(None)
        return self

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CaptureSettings":
        """Settings from a dict (a checkpoint's `model.speech`, a config's [speech] table), checked."""
        if not isinstance(values, dict):
            raise ValueError(f"speech settings must be a table, got {type(values).__name__}")
        try:
            given = checked(values, cls)
        except SettingError as error:
            if error.unknown:
                known = ", ".join(field.name for field in dataclasses.fields(cls))
                raise ValueError(f"unknown speech setting {error.key!r}; known: {known}") from None
            raise ValueError(f"speech setting {error}") from None
        return cls(**given).validate()

    def differences(self, other: "CaptureSettings") -> dict[str, tuple[Any, Any]]:
        """{setting: (mine, other's)} for every setting that differs."""
        mine, theirs = self.as_dict(), other.as_dict()
        return {name: (mine[name], theirs[name]) for name in mine if mine[name] != theirs[name]}


@dataclass
class CaptureResult:
    chunks: list[SpeechChunk]
    dropped_tail: DroppedTail | None
    kept_seconds: float
    dropped_seconds: dict[str, float]
    clock_seconds: float


def capture_chunks(source: Iterable[np.ndarray], settings: CaptureSettings = CaptureSettings(),
                   gate: PromptGate | None = None) -> CaptureResult:
    """The chunks the agent sends for this source (16 kHz int16 blocks), without a server or an outbox."""
    speech_filter = settings.speech_filter(gate)
    chunker = settings.chunker()
    chunks: list[SpeechChunk] = []
    for piece in speech_filter.run(source):
        chunks.extend(chunker.add(piece))
    last, tail = chunker.finish()
    chunks.extend(last)
    return CaptureResult(
        chunks=chunks,
        dropped_tail=tail,
        kept_seconds=speech_filter.kept_samples / SAMPLE_RATE,
        dropped_seconds={k: v / SAMPLE_RATE for k, v in speech_filter.dropped_samples.items()},
        clock_seconds=speech_filter.clock_samples / SAMPLE_RATE,
    )


def make_gate(settings: CaptureSettings, intervals: Iterable[tuple[float, float]] = ()) -> PromptGate:
    """A prompt gate holding `intervals` (session-clock seconds of the agent's own prompt playback)."""
    gate = PromptGate(echo_tail_seconds=settings.echo_tail_seconds)
    for start, end in intervals:
        gate.add_interval(start, end)
    return gate
