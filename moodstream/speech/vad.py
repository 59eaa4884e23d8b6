"""Keeping only the subject's speech: webrtcvad with hangover, plus prompt-playback gating.

Audio goes in as contiguous int16 blocks at 16 kHz; out come, in time order,
:class:`Piece` records saying which stretch of the session clock was kept
(with its samples) and which was dropped and why. The chunker consumes them.
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import webrtcvad

from moodstream.user_files import read_text
from moodstream.wire import SAMPLE_RATE

FRAME_MS_CHOICES = (10, 20, 30)

# Why a stretch of audio was dropped.
DROP_SILENCE = "silence"    # VAD: no speech (after the hangover ran out)
DROP_ONSET = "onset"        # VAD voted speech, but too briefly to start a speech run
DROP_PROMPT = "prompt"      # the agent's own prompt playback or its echo tail
DROP_TAIL = "tail"          # less than one VAD frame left at the end of the input
DROP_WARMUP = "warmup"      # webrtcvad still adapting to the input's noise floor

# webrtcvad adapts its noise model to the input over its first frames and votes
# "speech" on plain room noise until then (measured: up to 180 ms, any setting).
DEFAULT_WARMUP_MS = 200


@dataclass(frozen=True)
class Piece:
    """A contiguous stretch of the session clock, kept or dropped."""

    start_sample: int
    samples: np.ndarray | None  # int16 samples when kept; None when dropped
    length: int                 # number of samples covered
    kept: bool
    voted_speech: bool = False  # this VAD frame itself voted speech (hangover frames do not)
    reason: str = ""            # DROP_* when dropped

    @property
    def start_seconds(self) -> float:
        return self.start_sample / SAMPLE_RATE


class PromptGate:
    """Which parts of the session clock are the agent's own prompt playback.

    A kiosk calls :meth:`prompt_started` / :meth:`prompt_finished` around each
    interviewer prompt it plays (from any thread), or the intervals are known
    up front (:meth:`add_interval`, :func:`load_prompt_intervals`). Audio from
    a prompt's start to its end plus `echo_tail_seconds` is dropped whatever
    the VAD says: the microphone hears the loudspeaker and the room's echo.
    """

    def __init__(self, echo_tail_seconds: float = 0.3, clock: Callable[[], float] | None = None):
        if echo_tail_seconds < 0:
            raise ValueError(f"echo tail must be >= 0 s, got {echo_tail_seconds}")
        self.echo_tail_seconds = float(echo_tail_seconds)
        # Session-clock "now" for live calls without an explicit time; the agent sets it.
        self.clock = clock
        self._intervals: list[tuple[float, float]] = []
        self._open_since: float | None = None
        self._lock = threading.Lock()

    def _now(self, t: float | None) -> float:
        if t is not None:
            return float(t)
        if self.clock is None:
            raise ValueError("no time given and the gate has no session clock to read")
        return float(self.clock())

    def prompt_started(self, t: float | None = None) -> None:
        with self._lock:
            self._open_since = self._now(t)

    def prompt_finished(self, t: float | None = None) -> None:
        with self._lock:
            end = self._now(t)
            if self._open_since is None:
                raise ValueError("prompt_finished() without a prompt_started() before it")
            start, self._open_since = self._open_since, None
            self._intervals.append((start, max(start, end)))

    def add_interval(self, start: float, end: float) -> None:
        if not (math.isfinite(start) and math.isfinite(end)) or end < start or start < 0:
            raise ValueError(f"bad prompt interval ({start}, {end}): need 0 <= start <= end")
        with self._lock:
            self._intervals.append((float(start), float(end)))

    @property
    def intervals(self) -> list[tuple[float, float]]:
        with self._lock:
            return sorted(self._intervals)

    def blocks(self, start_seconds: float, end_seconds: float) -> bool:
        """Whether any of [start, end) lies in a prompt or its echo tail."""
        with self._lock:
            if self._open_since is not None and end_seconds > self._open_since:
                return True
            tail = self.echo_tail_seconds
            return any(
                start_seconds < prompt_end + tail and end_seconds > prompt_start
                for prompt_start, prompt_end in self._intervals
            )


def load_prompt_intervals(path: str | Path) -> list[tuple[float, float]]:
    """Prompt intervals from a file: one `START END` (seconds, session clock) per line,
    blank lines and `#` comments allowed, commas accepted as separators; or a JSON
    list of [start, end] pairs."""
    path = Path(path)
    text = read_text(path)
    intervals: list[tuple[float, float]] = []
    if text.lstrip().startswith("["):
        try:
            pairs = json.loads(text)
            intervals = [(float(start), float(end)) for start, end in pairs]
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: not a JSON list of [start, end] pairs ({error})") from None
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].replace(",", " ").strip()
            if not line:
                continue
            fields = line.split()
            try:
                if len(fields) != 2:
                    raise ValueError
                intervals.append((float(fields[0]), float(fields[1])))
            except ValueError:
                raise ValueError(
                    f"{path}:{number}: expected 'START END' in seconds, got {line!r}"
                ) from None
    for start, end in intervals:
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise ValueError(f"{path}: bad prompt interval ({start}, {end}): need 0 <= start <= end")
    return intervals


class SpeechFilter:
    """webrtcvad frame votes smoothed into speech runs, with prompt gating.

    A run starts after `onset_ms` of consecutive speech frames (those frames
    are kept too) and continues `hangover_ms` past the last speech frame, so
    the short pauses inside speech stay and isolated clicks do not start a run.
    The first `warmup_ms` of input only train webrtcvad's noise model: their
    votes are not trusted and the audio is dropped.
    """

    def __init__(
        self,
        *,
        aggressiveness: int = 2,
        frame_ms: int = 30,
        hangover_ms: int = 300,
        onset_ms: int = 60,
        warmup_ms: int = DEFAULT_WARMUP_MS,
        gate: PromptGate | None = None,
        first_sample: int = 0,
    ):
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"VAD aggressiveness must be 0, 1, 2 or 3, got {aggressiveness}")
        if frame_ms not in FRAME_MS_CHOICES:
            raise ValueError(f"VAD frame must be 10, 20 or 30 ms, got {frame_ms}")
        if hangover_ms < 0 or onset_ms < 0 or warmup_ms < 0:
            raise ValueError("hangover, onset and warm-up must be >= 0 ms")
        self.aggressiveness = aggressiveness
        self.frame_ms = frame_ms
        self.hangover_ms = hangover_ms
        self.onset_ms = onset_ms
        self.warmup_ms = warmup_ms
        self.gate = gate
        self.frame_samples = SAMPLE_RATE * frame_ms // 1000
        self._onset_frames = max(1, math.ceil(onset_ms / frame_ms))
        self._hangover_frames = hangover_ms // frame_ms
        self._warmup_frames_left = math.ceil(warmup_ms / frame_ms)
        self._vad = webrtcvad.Vad(aggressiveness)
        self._carry = np.zeros(0, np.int16)
        self._next_sample = first_sample  # session-clock sample of the next frame
        self._speaking = False
        self._quiet_frames = 0
        self._pending: list[tuple[int, np.ndarray]] = []  # speech frames awaiting onset
        self.dropped_samples = {DROP_SILENCE: 0, DROP_ONSET: 0, DROP_PROMPT: 0, DROP_TAIL: 0, DROP_WARMUP: 0}
        self.kept_samples = 0
        self.speech_frames = 0

    def settings(self) -> dict:
        return {
            "vad_aggressiveness": self.aggressiveness,
            "frame_ms": self.frame_ms,
            "hangover_ms": self.hangover_ms,
            "onset_ms": self.onset_ms,
            "warmup_ms": self.warmup_ms,
            "echo_tail_seconds": self.gate.echo_tail_seconds if self.gate else None,
        }

    @property
    def clock_samples(self) -> int:
        """Session-clock position up to which audio has been received."""
        return self._next_sample + len(self._carry)

    def process(self, block: np.ndarray) -> list[Piece]:
        block = np.asarray(block)
        if block.dtype != np.int16 or block.ndim != 1:
            raise ValueError("SpeechFilter.process needs a 1-D int16 block at 16 kHz")
        samples = np.concatenate([self._carry, block]) if len(self._carry) else block
        size = self.frame_samples
        whole = len(samples) - len(samples) % size
        self._carry = samples[whole:].copy()
        out: list[Piece] = []
        for offset in range(0, whole, size):
            self._frame(samples[offset:offset + size], out)
        return out

    def flush(self) -> list[Piece]:
        """End of input: unresolved onset frames and a partial last frame are dropped."""
        out: list[Piece] = []
        self._drop_pending(out, DROP_ONSET)
        if len(self._carry):
            out.append(self._dropped(self._next_sample, len(self._carry), DROP_TAIL))
            self._next_sample += len(self._carry)
            self._carry = np.zeros(0, np.int16)
        self._speaking = False
        return out

    def run(self, blocks: Iterable[np.ndarray]) -> Iterator[Piece]:
        for block in blocks:
            yield from self.process(block)
        yield from self.flush()

    def _dropped(self, start: int, length: int, reason: str) -> Piece:
        self.dropped_samples[reason] += length
        return Piece(start, None, length, kept=False, reason=reason)

    def _keep(self, start: int, frame: np.ndarray, voted: bool, out: list[Piece]) -> None:
        self.kept_samples += len(frame)
        self.speech_frames += voted
        out.append(Piece(start, frame, len(frame), kept=True, voted_speech=voted))

    def _drop_pending(self, out: list[Piece], reason: str) -> None:
        for start, frame in self._pending:
            out.append(self._dropped(start, len(frame), reason))
        self._pending.clear()

    def _frame(self, frame: np.ndarray, out: list[Piece]) -> None:
        start = self._next_sample
        self._next_sample += len(frame)
        if self.gate is not None and self.gate.blocks(
            start / SAMPLE_RATE, self._next_sample / SAMPLE_RATE
        ):
            # Prompt audio is dropped outright and ends any speech run: after a prompt
            # the subject's answer has to start a run on its own.
            self._drop_pending(out, DROP_ONSET)
            self._speaking = False
            out.append(self._dropped(start, len(frame), DROP_PROMPT))
            return
        frame = frame.copy()  # the caller's block buffer must not be referenced by kept pieces
        voted = self._vad.is_speech(frame.tobytes(), SAMPLE_RATE)
        if self._warmup_frames_left:
            self._warmup_frames_left -= 1
            out.append(self._dropped(start, len(frame), DROP_WARMUP))
            return
        if self._speaking:
            if voted:
                self._quiet_frames = 0
                self._keep(start, frame, True, out)
            elif self._quiet_frames < self._hangover_frames:
                self._quiet_frames += 1
                self._keep(start, frame, False, out)
            else:
                self._speaking = False
                out.append(self._dropped(start, len(frame), DROP_SILENCE))
            return
        if not voted:
            self._drop_pending(out, DROP_ONSET)
            out.append(self._dropped(start, len(frame), DROP_SILENCE))
            return
        self._pending.append((start, frame))
        if len(self._pending) >= self._onset_frames:
            for pending_start, pending_frame in self._pending:
                self._keep(pending_start, pending_frame, True, out)
            self._pending.clear()
            self._speaking = True
            self._quiet_frames = 0
