"""Generated test audio for the agent tests, and proof that webrtcvad hears it as intended.

Speech stand-in: a voiced harmonic source (drifting pitch, formant-shaped
harmonics) amplitude-modulated at a syllable rate. Silence stand-in: very
quiet noise, so that every 10-30 ms frame of a recording is unique and a
chunk's samples can be traced back to the exact time they came from.
"""
import numpy as np
import pytest
import webrtcvad

RATE = 16000


def speech_like(seconds: float, *, pitch_hz: float = 130.0, seed: int = 0, level: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * RATE))) / RATE
    drift = rng.uniform(0, 2 * np.pi, 2)
    pitch = pitch_hz * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t + drift[0]) + 0.03 * np.sin(2 * np.pi * 2.3 * t + drift[1]))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    wave = np.zeros_like(t)
    for harmonic in range(1, 30):
        frequency = harmonic * pitch
        formants = sum(np.exp(-0.5 * ((frequency - centre) / width) ** 2)
                       for centre, width in ((500, 120), (1500, 200), (2500, 300)))
        wave += (formants + 0.05) / np.sqrt(harmonic) * np.sin(harmonic * phase)
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi))
    wave *= syllables
    wave /= np.abs(wave).max()
    wave += 0.002 * rng.standard_normal(t.size)  # keeps every frame unique
    return np.clip(np.rint(wave * level * 32767), -32768, 32767).astype(np.int16)


def quiet(seconds: float, *, seed: int = 1, level: float = 30.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.rint(rng.standard_normal(int(round(seconds * RATE))) * level).astype(np.int16)


def speech_votes(samples: np.ndarray, aggressiveness: int, frame_ms: int) -> np.ndarray:
    vad = webrtcvad.Vad(aggressiveness)
    size = RATE * frame_ms // 1000
    return np.array([vad.is_speech(samples[i:i + size].tobytes(), RATE)
                     for i in range(0, len(samples) - size + 1, size)])


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
def test_webrtcvad_hears_the_generated_speech_as_speech_and_the_quiet_as_not(aggressiveness, frame_ms):
    voice = speech_like(3.0, seed=aggressiveness)
    assert speech_votes(voice, aggressiveness, frame_ms).mean() > 0.95
    # After webrtcvad's noise model has adapted (the agent's 200 ms warm-up), quiet is not speech.
    warmup_frames = -(-200 // frame_ms)
    votes = speech_votes(quiet(3.0, seed=aggressiveness), aggressiveness, frame_ms)
    assert votes[warmup_frames:].mean() < 0.01
