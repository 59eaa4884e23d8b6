"""Regenerate the demo's bundled interview recording with espeak-ng.

    python scripts/make_sample_interview.py   # needs espeak-ng (Debian: apt-get install espeak-ng)

Writes moodstream/assets/sample-interview.ogg (16 kHz mono Ogg Vorbis) and
sample-interview.prompts.csv (when the kiosk played each interviewer prompt,
so the agent can gate them out). Every sound in it is synthesised from the
text below, so the recording is free of third-party rights. The subject's
voice is a speech synthesiser: it shows the pipeline, it says nothing about
anyone's mood.
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


def synthesise(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
                       check=True)
        audio, rate = soundfile.read(wav, dtype="float32")
    return soxr.resample(audio, rate, RATE).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def main() -> int:
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed (Debian: apt-get install espeak-ng)", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    parts, prompts, cursor = [silence(1.0)], [], 1.0
    for question, answer in INTERVIEW:
        prompt = synthesise(question, "en-us+m3", 165, 55)
        prompts.append((round(cursor, 3), round(cursor + prompt.size / RATE, 3)))
        reply = synthesise(answer, "en-gb+f2", 130, 35)
        for piece in (prompt, silence(0.8), reply, silence(2.0)):
            parts.append(piece)
            cursor += piece.size / RATE
    audio = np.concatenate(parts)
    audio += 0.0003 * rng.standard_normal(audio.size).astype(np.float32)  # a quiet room, not digital silence
    audio = 0.8 * audio / np.abs(audio).max()
    ASSETS.mkdir(parents=True, exist_ok=True)
    soundfile.write(ASSETS / "sample-interview.ogg", audio, RATE, format="OGG", subtype="VORBIS")
    with open(ASSETS / "sample-interview.prompts.csv", "w", newline="") as handle:
        handle.write("# start_seconds,end_seconds of each interviewer prompt the kiosk played\n")
        csv.writer(handle).writerows(prompts)
    print(f"wrote {audio.size / RATE:.1f} s, {len(prompts)} prompts to {ASSETS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
