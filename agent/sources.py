"""The agent's audio sources: a file, raw PCM on stdin, or a microphone, as 16 kHz mono int16 blocks.

A source is an iterable of 1-D ``numpy.int16`` arrays at :data:`SAMPLE_RATE`.
Blocks are contiguous: the session clock of a sample is the number of samples
yielded before it divided by the sample rate.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import BinaryIO, Iterator

import numpy as np
import soxr

from moodstream.speech.audio_file import FileSource, SourceError, float_to_int16
from moodstream.wire import SAMPLE_RATE

__all__ = ["FileSource", "MicrophoneSource", "MicrophoneUnavailable", "PcmStreamSource", "SAMPLE_RATE",
           "SourceError", "open_source"]


class MicrophoneUnavailable(SourceError):
    """No microphone can be opened; the message starts with "no microphone:"."""


class PcmStreamSource:
    """Raw signed 16-bit little-endian PCM, mono, from a byte stream (stdin for `-`)."""

    replayable = False

    def __init__(
        self,
        stream: BinaryIO | None = None,
        *,
        input_rate: int = SAMPLE_RATE,
        block_seconds: float = 0.1,
        stop: threading.Event | None = None,
        name: str = "stdin",
    ):
        if input_rate < 1000 or input_rate > 384000:
            raise SourceError(f"--input-rate must be between 1000 and 384000 Hz, got {input_rate}")
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.input_rate = int(input_rate)
        self.block_bytes = 2 * max(1, int(block_seconds * input_rate))
        self.name = name
        self._stop = stop or threading.Event()

    def describe(self) -> dict:
        return {"kind": "pcm-stream", "name": self.name, "input_rate": self.input_rate}

    def _read(self, size: int) -> bytes:
        # read1 returns what is available, so a live pipe is not held back to full blocks.
        read = getattr(self.stream, "read1", None) or self.stream.read
        return read(size)

    def __iter__(self) -> Iterator[np.ndarray]:
        resampler = None if self.input_rate == SAMPLE_RATE else soxr.ResampleStream(
            self.input_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ"
        )
        carry = b""
        total_bytes = 0
        while not self._stop.is_set():
            data = self._read(self.block_bytes)
            if not data:
                break
            total_bytes += len(data)
            data = carry + data
            usable = len(data) - len(data) % 2
            carry = data[usable:]
            if not usable:
                continue
            samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)
            if resampler is not None:
                samples = float_to_int16(
                    resampler.resample_chunk(samples.astype(np.float32) / 32768.0)
                )
            if len(samples):
                yield samples
        if carry:
            raise SourceError(
                f"{self.name} ended after an odd number of bytes ({total_bytes}): raw PCM s16le "
                "needs 2 bytes per sample, so the input is truncated or not 16-bit PCM"
            )
        if resampler is not None:
            tail = float_to_int16(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            if len(tail):
                yield tail


@contextlib.contextmanager
def _native_stderr_silenced():
    """PortAudio's ALSA/JACK probing prints screens of C-level warnings on headless Linux;
    they would bury the one line that says what is wrong."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class MicrophoneSource:
    """The default (or given) input device via PyAudio, from the optional `mic` extra.

    The device is opened in the constructor, so a machine without a microphone
    fails before anything else starts.
    """

    replayable = False

    def __init__(
        self,
        *,
        device_index: int | None = None,
        block_seconds: float = 0.1,
        stop: threading.Event | None = None,
    ):
        try:
            import pyaudio
        except ImportError:
            raise MicrophoneUnavailable(
                "no microphone: PyAudio is not installed (install the extra: pip install 'moodstream[mic]')"
            ) from None
        self._stop = stop or threading.Event()
        self._pyaudio = pyaudio
        with _native_stderr_silenced():
            self._audio = pyaudio.PyAudio()
        try:
            try:
                with _native_stderr_silenced():
                    device = (
                        self._audio.get_device_info_by_index(device_index)
                        if device_index is not None
                        else self._audio.get_default_input_device_info()
                    )
            except (IOError, OSError, ValueError):
                raise MicrophoneUnavailable(
                    "no microphone: this machine has no audio input device"
                    if device_index is None
                    else f"no microphone: input device {device_index} does not exist"
                ) from None
            if int(device.get("maxInputChannels", 0)) < 1:
                raise MicrophoneUnavailable(
                    f"no microphone: device {device.get('name')!r} has no input channels"
                )
            self.device_name = str(device.get("name"))
            self._device_index = int(device["index"])
            self.input_rate = SAMPLE_RATE
            self._stream = self._open(SAMPLE_RATE, block_seconds)
            if self._stream is None:
                # Some devices only run at their native rate; capture there and resample.
                self.input_rate = int(device.get("defaultSampleRate") or 48000)
                self._stream = self._open(self.input_rate, block_seconds)
            if self._stream is None:
                raise MicrophoneUnavailable(
                    f"no microphone: cannot open {self.device_name!r} for 16-bit mono capture"
                )
        except BaseException:
            self._audio.terminate()
            raise
        self._frames_per_block = max(1, int(block_seconds * self.input_rate))

    def _open(self, rate: int, block_seconds: float):
        try:
            with _native_stderr_silenced():
                return self._audio.open(
                    format=self._pyaudio.paInt16,
                    channels=1,
                    rate=rate,
                    input=True,
                    input_device_index=self._device_index,
                    frames_per_buffer=max(1, int(block_seconds * rate)),
                )
        except (IOError, OSError, ValueError):
            return None

    def describe(self) -> dict:
        return {"kind": "microphone", "device": self.device_name, "input_rate": self.input_rate}

    def stop(self) -> None:
        self._stop.set()

    def __iter__(self) -> Iterator[np.ndarray]:
        resampler = None if self.input_rate == SAMPLE_RATE else soxr.ResampleStream(
            self.input_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ"
        )
        try:
            while not self._stop.is_set():
                # Overflow means we fell behind; losing a few ms of capture beats stopping.
                data = self._stream.read(self._frames_per_block, exception_on_overflow=False)
                samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
                if resampler is not None:
                    samples = float_to_int16(
                        resampler.resample_chunk(samples.astype(np.float32) / 32768.0)
                    )
                if len(samples):
                    yield samples
        finally:
            self._stream.stop_stream()
            self._stream.close()
            self._audio.terminate()


def open_source(
    spec: str | None,
    *,
    mic: bool = False,
    channel: int | None = None,
    input_rate: int = SAMPLE_RATE,
    speed: float = 0.0,
    stop: threading.Event | None = None,
):
    """The source for a CLI-style spec: a file path, "-" for raw PCM on stdin, or `mic=True`."""
    if mic:
        if spec is not None:
            raise SourceError("give either an audio FILE, '-' for stdin, or --mic, not several")
        if channel is not None:
            raise SourceError("--channel applies to multichannel files, not to --mic")
        return MicrophoneSource(stop=stop)
    if spec is None:
        raise SourceError("no audio input: give an audio FILE, '-' for raw PCM on stdin, or --mic")
    if spec == "-":
        if channel is not None:
            raise SourceError("--channel applies to multichannel files; stdin is read as mono PCM")
        if sys.stdin is None or sys.stdin.isatty():
            raise SourceError("'-' reads raw PCM s16le from stdin, but stdin is a terminal: pipe audio into it")
        return PcmStreamSource(input_rate=input_rate, stop=stop)
    return FileSource(spec, channel=channel, speed=speed, stop=stop)
