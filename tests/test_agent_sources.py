"""Audio sources on real files and byte streams: resampling, channels, and clear errors."""
import io
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from moodstream.agent import FileSource, MicrophoneSource, MicrophoneUnavailable, PcmStreamSource, SourceError

RATE = 16000


def tone(frequency: float, seconds: float, rate: int, amplitude: float = 0.4) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * frequency * t)


def dominant_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / RATE)[np.argmax(spectrum)])


def read_all(source) -> np.ndarray:
    blocks = list(source)
    assert all(block.dtype == np.int16 and block.ndim == 1 for block in blocks)
    return np.concatenate(blocks) if blocks else np.zeros(0, np.int16)


@pytest.mark.parametrize("rate, fmt, subtype", [(44100, "WAV", "PCM_16"), (48000, "FLAC", "PCM_24"),
                                                (48000, "OGG", "VORBIS")])
def test_stereo_files_become_16k_mono_with_the_chosen_channel(tmp_path, rate, fmt, subtype):
    left, right = tone(440, 2.0, rate), tone(1000, 2.0, rate)
    path = tmp_path / f"stereo.{fmt.lower()}"
    soundfile.write(path, np.stack([left, right], axis=1), rate, format=fmt, subtype=subtype)

    first = read_all(FileSource(path, channel=0, block_seconds=0.3))
    second = read_all(FileSource(path, channel=1))
    both = read_all(FileSource(path))
    for samples in (first, second, both):
        assert abs(len(samples) - 2.0 * RATE) <= 2  # 16 kHz: the resampler's delay is flushed, not lost
    middle = slice(RATE // 2, RATE + RATE // 2)
    assert dominant_frequency(first[middle]) == pytest.approx(440, abs=2)
    assert dominant_frequency(second[middle]) == pytest.approx(1000, abs=2)
    spectrum = np.abs(np.fft.rfft(both[middle].astype(float)))
    frequencies = np.fft.rfftfreq(RATE, 1 / RATE)
    peaks = sorted(frequencies[np.argsort(spectrum)[-2:]])
    assert peaks == pytest.approx([440, 1000], abs=2)  # the downmix has both
    # Level is kept: a 0.4 full-scale tone stays one (within the resampler's ripple).
    assert np.abs(first[middle]).max() / 32768 == pytest.approx(0.4, rel=0.05)


def test_16k_files_pass_through_bit_exact(tmp_path):
    samples = np.random.default_rng(0).integers(-30000, 30000, 3 * RATE, dtype=np.int16)
    path = tmp_path / "native.wav"
    soundfile.write(path, samples, RATE, subtype="PCM_16")
    assert np.array_equal(read_all(FileSource(path, block_seconds=0.7)), samples)


def test_a_channel_that_does_not_exist_is_refused(tmp_path):
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.zeros((RATE, 2)), RATE)
    with pytest.raises(SourceError, match=r"--channel 2 does not exist: .* has 2 channel\(s\), numbered 0..1"):
        FileSource(path, channel=2)


def test_corrupt_missing_and_truncated_files_give_clear_errors(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    with pytest.raises(SourceError, match=r"cannot read audio file .*corrupt.wav: Format not recognised"):
        FileSource(corrupt)
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="cannot read audio file"):
        FileSource(empty)
    with pytest.raises(SourceError, match="audio file not found: .*nothing.wav"):
        FileSource(tmp_path / "nothing.wav")
    with pytest.raises(SourceError, match="is a directory"):
        FileSource(tmp_path)

    whole = tmp_path / "whole.flac"
    soundfile.write(whole, tone(300, 4.0, 48000), 48000, format="FLAC")
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes(data[: len(data) // 2] + bytes(range(256)) * 8)  # cut, then garbage
    with pytest.raises(SourceError, match="cannot read audio file .*truncated.flac"):
        read_all(FileSource(truncated))


def test_raw_pcm_stream_at_its_rate_is_resampled():
    wave = np.rint(tone(500, 1.5, 8000) * 32767).astype("<i2")
    samples = read_all(PcmStreamSource(io.BytesIO(wave.tobytes()), input_rate=8000))
    assert abs(len(samples) - 1.5 * RATE) <= 2
    assert dominant_frequency(samples[RATE // 4: RATE // 4 + RATE]) == pytest.approx(500, abs=2)


def test_raw_pcm_stream_at_16k_passes_through_even_across_odd_reads():
    samples = np.arange(-5000, 5000, dtype="<i2")

    class Trickle(io.RawIOBase):  # a pipe delivering 3 bytes at a time
        def __init__(self, data):
            self.data = data

        def readable(self):
            return True

        def readinto(self, buffer):
            piece, self.data = self.data[:3], self.data[3:]
            buffer[:len(piece)] = piece
            return len(piece)

    assert np.array_equal(read_all(PcmStreamSource(Trickle(samples.tobytes()))), samples)


def test_an_odd_byte_count_on_stdin_is_a_clear_error():
    source = PcmStreamSource(io.BytesIO(b"\x01\x00\x02\x00\x03"), name="stdin")
    with pytest.raises(SourceError, match=r"stdin ended after an odd number of bytes \(5\)"):
        read_all(source)


def test_bad_input_rate_is_refused():
    with pytest.raises(SourceError, match="--input-rate"):
        PcmStreamSource(io.BytesIO(b""), input_rate=0)


def test_odd_stdin_through_the_cli_is_one_clear_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "-P", "-m", "moodstream.compose.cli", "agent", "--server", "127.0.0.1:9", "--participant", "p1",
         "--outbox", str(tmp_path), "--max-retry-seconds", "30", "-"],
        input=b"\x00" * (RATE * 2) + b"\x01", capture_output=True, timeout=60)
    errors = run.stderr.decode()
    assert run.returncode != 0
    assert "stdin ended after an odd number of bytes (32001)" in errors


def test_a_missing_microphone_is_one_clear_line(tmp_path):
    try:
        MicrophoneSource().stop()
        pytest.skip("this machine has a working microphone")
    except MicrophoneUnavailable as error:
        assert str(error).startswith("no microphone: ")
        assert "\n" not in str(error)
    run = subprocess.run(
        [sys.executable, "-P", "-m", "moodstream.compose.cli", "agent", "--server", "127.0.0.1:9", "--participant", "p1",
         "--outbox", str(tmp_path), "--mic"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moodstream agent: no microphone: "), run.stderr
