"""Reading an audio file onto the speech path's clock: 16 kHz mono int16 blocks.

Training, evaluation, the server's accuracy probe and the agent all read recordings
through :class:`FileSource`, so a file is resampled and downmixed one way everywhere
(docs/speech-path.md).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile
import soxr

from moodstream.wire import SAMPLE_RATE


class SourceError(ValueError):
    """The audio input cannot be used (unreadable, malformed, wrong option)."""


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    scaled = np.rint(np.asarray(samples, dtype=np.float64) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def _pick_channel(frames: np.ndarray, channel: int | None) -> np.ndarray:
    """(n, channels) -> (n,): the selected channel, or the mean of all of them."""
    if frames.ndim == 1:
        return frames
    if channel is not None:
        return frames[:, channel]
    if frames.dtype == np.int16:
        # Averaging in int32 avoids wrap-around; rounding keeps it unbiased.
        return np.rint(frames.astype(np.int32).mean(axis=1)).astype(np.int16)
    return frames.mean(axis=1, dtype=np.float32)


def _check_channel(channel: int | None, channels: int, what: str) -> None:
    if channel is None:
        return
    if not 0 <= channel < channels:
        raise SourceError(
            f"--channel {channel} does not exist: {what} has {channels} channel(s), "
            f"numbered 0..{channels - 1}"
        )


class _Pacer:
    """Holds a producer back to `speed` times real time (0 = no pacing)."""

    def __init__(self, speed: float, stop: threading.Event | None):
        if speed < 0:
            raise SourceError(f"--speed must be >= 0 (0 = as fast as possible), got {speed}")
        self.speed = speed
        self.stop = stop or threading.Event()
        self.unpaced_until_seconds = 0.0
        self.origin_seconds = 0.0
        self.started = None

    def wait_until(self, audio_seconds: float) -> None:
        if self.speed == 0 or audio_seconds <= self.unpaced_until_seconds:
            return
        if self.started is None:
            self.started = time.monotonic()
            self.origin_seconds = max(self.unpaced_until_seconds, 0.0)
        delay = self.started + (audio_seconds - self.origin_seconds) / self.speed - time.monotonic()
        if delay > 0:
            self.stop.wait(delay)


class FileSource:
    """Any file libsndfile reads (wav, flac, ogg/vorbis, aiff, ...).

    Multichannel files give one channel (`channel`, 0-based) or their downmix.
    Other sample rates are resampled to 16 kHz with soxr (streaming, so long
    files are never loaded whole).
    """

    replayable = True  # the same file gives the same blocks again (used to resume a session)

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        channel: int | None = None,
        speed: float = 0.0,
        block_seconds: float = 1.0,
        stop: threading.Event | None = None,
    ):
        self.path = Path(path)
        self.channel = channel
        self.block_seconds = block_seconds
        self._pacer = _Pacer(speed, stop)
        self._stop = self._pacer.stop
        if not self.path.exists():
            raise SourceError(f"audio file not found: {self.path}")
        if self.path.is_dir():
            raise SourceError(f"audio file is a directory: {self.path}")
        try:
            info = soundfile.info(str(self.path))
        except TypeError:
            # soundfile's answer for a headerless format (.raw): it cannot know the rate or layout.
            raise SourceError(f"cannot read audio file {self.path}: it has no header giving its sample rate "
                              "and sample format; pipe raw PCM s16le into '-' with --input-rate instead") from None
        except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
            raise SourceError(f"cannot read audio file {self.path}: {_reason(error)}") from None
        if info.samplerate <= 0 or info.channels <= 0:
            raise SourceError(f"cannot read audio file {self.path}: no audio in it")
        _check_channel(channel, info.channels, str(self.path))
        self.input_rate = int(info.samplerate)
        self.input_channels = int(info.channels)
        self.duration_seconds = float(info.duration)

    @property
    def unpaced_until_seconds(self) -> float:
        """Audio before this point is read as fast as possible whatever the speed (resuming)."""
        return self._pacer.unpaced_until_seconds

    @unpaced_until_seconds.setter
    def unpaced_until_seconds(self, seconds: float) -> None:
        self._pacer.unpaced_until_seconds = float(seconds)

    def describe(self) -> dict:
        stat = self.path.stat()
        return {
            "kind": "file",
            "path": str(self.path.resolve()),
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "channel": self.channel,
        }

    def __iter__(self) -> Iterator[np.ndarray]:
        native = self.input_rate == SAMPLE_RATE
        frames_per_block = max(1, int(self.block_seconds * self.input_rate))
        resampler = None if native else soxr.ResampleStream(
            self.input_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ"
        )
        produced = 0
        try:
            with soundfile.SoundFile(str(self.path)) as audio:
                while not self._stop.is_set():
                    # Native-rate files are read as int16 so their samples pass through bit-exact.
                    frames = audio.read(
                        frames_per_block, dtype="int16" if native else "float32", always_2d=True
                    )
                    last = len(frames) < frames_per_block
                    mono = _pick_channel(frames, self.channel)
                    if resampler is not None:
                        mono = float_to_int16(resampler.resample_chunk(mono, last=last))
                    if len(mono):
                        produced += len(mono)
                        self._pacer.wait_until(produced / SAMPLE_RATE)
                        yield mono
                    if last:
                        return
        except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
            raise SourceError(f"cannot read audio file {self.path}: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    text = str(error).strip()
    # libsndfile prefixes its messages with the path; the caller already says which file.
    if "Error opening" in text and ":" in text:
        text = text.rsplit(":", 1)[-1].strip()
    elif text.startswith("Error :"):
        text = text[len("Error :"):].strip()
    return text or type(error).__name__
