"""Regenerate the demo's two bundled interview recordings with espeak-ng.

    python scripts/make_sample_interview.py   # needs espeak-ng (Debian: apt-get install espeak-ng)

Writes, for each of two synthetic participants, a 16 kHz mono Ogg Vorbis
recording and a CSV of when the kiosk played each interviewer prompt (so the
agent can gate them out):

    sample-interview.ogg         slowed, low, flat delivery with long pauses
    sample-interview-lively.ogg  quick, higher-pitched, varied delivery

Each participant reads with the typical delivery of one of the demo
checkpoint's classes (the middle of trainer/demo_recipe.py STYLES), in a voice
the checkpoint never heard (DEMO_VOICE). Every sound is
synthesised from the text below, so the recordings are free of third-party
rights. The voice is a speech synthesiser: it shows the pipeline, it says
nothing about anyone's mood.
"""
import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import soxr

# The demo corpus's styles; DEMO_VOICE is never one of its speakers.
from moodstream.trainer.demo_recipe import DEMO_VOICE, PITCH_RANGES, STYLES

RATE = 16000
ASSETS = Path(__file__).resolve().parents[1] / "moodstream" / "assets"

INTERVIEW = [
    ("How have you been sleeping lately?",
     "Not very well, to be honest. I wake up around four in the morning and I cannot get back to sleep. "
     "Then the whole day feels long and heavy, and I am tired before lunch."),
    ("What do you usually do in the evenings?",
     "Mostly I sit at home. I used to go walking with a friend, but I stopped doing that in the spring. "
     "Now I watch television, although I could not tell you what I watched."),
    ("Tell me about something you enjoyed recently.",
     "I am not sure. My sister visited last weekend and we cooked together. That was nice, I think, "
     "but I felt as if I was watching it from far away."),
    ("How is work going for you?",
     "It is fine. I get things done, slowly. I find it harder to concentrate on long reports, "
     "and I read the same page several times before it sinks in."),
    ("Is there anything you are looking forward to?",
     "Maybe the summer. We talked about a trip to the coast. I would like to want to go, "
     "if that makes sense. Right now it is hard to picture it."),
]


def synthesise(text: str, voice: str, speed: int, pitch: int, pitch_range: str = "medium", gap: int = 0,
               amplitude: int = 100) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        ssml = f'<speak><prosody range="{pitch_range}">{text}</prosody></speak>'
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-g", str(gap),
                        "-a", str(amplitude), "-m", "-w", str(wav), ssml], check=True)
        audio, rate = soundfile.read(wav, dtype="float32")
    return soxr.resample(audio, rate, RATE).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def typical_delivery(style: str) -> dict:
    """The middle of a demo-corpus style's distributions: a typical session of its class, not a caricature
    beyond the other class's range (which any calibrated model would score as certain)."""
    settings = STYLES[style]
    expected_range = sum(i * p for i, p in enumerate(settings["pitch_range"]))
    return dict(speed=round(settings["speed"][0]), pitch=round(settings["pitch"][0]),
                pitch_range=PITCH_RANGES[round(expected_range)], gap=round(sum(settings["word_gap"]) / 2),
                amplitude=100)


# (file stem, espeak-ng settings of the participant's answers, pause after each answer in seconds)
PARTICIPANTS = [
    ("sample-interview", typical_delivery("slowed"), 2.0),
    ("sample-interview-lively", typical_delivery("lively"), 1.0),
]


def write_interview(stem: str, answer_style: dict, pause: float, rng: np.random.Generator) -> None:
    parts, prompts, cursor = [silence(1.0)], [], 1.0
    for question, answer in INTERVIEW:
        prompt = synthesise(question, "en-us+m3", 165, 55)
        prompts.append((round(cursor, 3), round(cursor + prompt.size / RATE, 3)))
        reply = synthesise(answer, DEMO_VOICE, **answer_style)
        for piece in (prompt, silence(0.8), reply, silence(pause)):
            parts.append(piece)
            cursor += piece.size / RATE
    audio = np.concatenate(parts)
    audio += 0.0003 * rng.standard_normal(audio.size).astype(np.float32)  # a quiet room, not digital silence
    audio = 0.8 * audio / np.abs(audio).max()
    ASSETS.mkdir(parents=True, exist_ok=True)
    # In blocks: libsndfile's Vorbis encoder crashes on one long write.
    with soundfile.SoundFile(ASSETS / f"{stem}.ogg", "w", RATE, 1, format="OGG", subtype="VORBIS") as out:
        for start in range(0, audio.size, RATE):
            out.write(audio[start:start + RATE])
    with open(ASSETS / f"{stem}.prompts.csv", "w", newline="") as handle:
        handle.write("# start_seconds,end_seconds of each interviewer prompt the kiosk played\n")
        csv.writer(handle).writerows(prompts)
    print(f"wrote {stem}.ogg: {audio.size / RATE:.1f} s, {len(prompts)} prompts")


def main() -> int:
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed (Debian: apt-get install espeak-ng)", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    for stem, style, pause in PARTICIPANTS:
        write_interview(stem, style, pause, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main())
