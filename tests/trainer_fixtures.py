"""Generated data for the trainer tests: a DAIC-WOZ folder in the distributed layout, and tone 'speech'."""
from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import soundfile

RATE = 16000
ELLIE_AMPLITUDE = 0.6
PARTICIPANT_AMPLITUDE = 0.1


def voice(seconds: float, pitch: float, amplitude: float, seed: int, rate: int = RATE) -> np.ndarray:
    """Speech-like: a harmonic tone with a 4 Hz syllable envelope, plus faint noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    vibrato = pitch * (1 + 0.03 * np.sin(2 * np.pi * 5 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(vibrato) / rate
    tone = sum(np.sin(k * phase) / k for k in (1, 2, 3))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
    wave = amplitude * tone * envelope / 1.8 + 0.002 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def interview(turns: list[tuple[float, float, str]], total: float, seed: int) -> np.ndarray:
    """Audio where Ellie's turns are loud 300 Hz tones and the participant's quiet 120 Hz tones."""
    audio = np.zeros(int(total * RATE), dtype=np.float32)
    for index, (start, end, speaker) in enumerate(turns):
        ellie = speaker == "Ellie"
        piece = voice(end - start, 300 if ellie else 120, ELLIE_AMPLITUDE if ellie else PARTICIPANT_AMPLITUDE,
                      seed * 100 + index)
        a = int(start * RATE)
        audio[a: a + len(piece)] = piece[: len(audio) - a]
    return audio


def transcript_text(turns: list[tuple[float, float, str]]) -> str:
    lines = ["start_time\tstop_time\tspeaker\tvalue"]
    for start, end, speaker in turns:
        lines.append(f"{start:.3f}\t{end:.3f}\t{speaker}\t{'hi how are you' if speaker == 'Ellie' else 'fine'}")
    return "\n".join(lines) + "\n"


def standard_turns(total: float = 40.0) -> list[tuple[float, float, str]]:
    turns, t = [], 1.0
    while t + 6 < total:
        turns.append((t, t + 2.0, "Ellie"))
        turns.append((t + 2.5, t + 6.0, "Participant"))
        t += 6.5
    return turns


def write_wav_bytes(audio: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    soundfile.write(buffer, audio, RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def make_daic_woz(root: Path) -> dict:
    """A DAIC-WOZ copy in the distributed layout with good and broken participants.

    Returns {participant: what it is} for the assertions.
    """
    root.mkdir(parents=True, exist_ok=True)
    cases = {}

    def participant(pid: int, as_zip: bool = False, audio: bytes | None = None, transcript: str | None = None,
                    seed: int = 0, total: float = 40.0, turns=None):
        turns = turns or standard_turns(total)
        if audio is None:
            audio = write_wav_bytes(interview(turns, total, seed or pid))
        if transcript is None:
            transcript = transcript_text(turns)
        files = {f"{pid}_AUDIO.wav": audio, f"{pid}_TRANSCRIPT.csv": transcript.encode()}
        files = {k: v for k, v in files.items() if v is not None}
        if as_zip:
            with zipfile.ZipFile(root / f"{pid}_P.zip", "w") as archive:
                for name, data in files.items():
                    archive.writestr(name, data)
                archive.writestr(f"{pid}_COVAREP.csv", "0,0,0\n")
        else:
            folder = root / f"{pid}_P"
            folder.mkdir()
            for name, data in files.items():
                (folder / name).write_bytes(data)

    participant(300); cases["300"] = "good folder"
    participant(301, as_zip=True); cases["301"] = "good zip"
    participant(302); (root / "302_P" / "302_TRANSCRIPT.csv").unlink(); cases["302"] = "transcript missing"
    participant(303, transcript="this is not a transcript\n1\t2\n"); cases["303"] = "broken transcript"
    participant(304, audio=b"RIFF....not really a wav file"); cases["304"] = "unreadable audio"
    overlapping = standard_turns() + [(4.0, 5.0, "Participant"), (38.0, 55.0, "Participant")]
    participant(305, turns=overlapping, total=40.0); cases["305"] = "overlap + out of range"
    participant(409); cases["409"] = "known label inconsistency"
    participant(310); cases["310"] = "dev"
    participant(311); cases["311"] = "dev"
    participant(320, as_zip=True); cases["320"] = "test (full_test_split)"
    participant(321); cases["321"] = "test + known misalignment"
    participant(373); cases["373"] = "known interrupted"
    cases["342"] = "known missing id"

    def split_file(name, header, rows):
        with open(root / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    header = ["Participant_ID", "PHQ8_Binary", "PHQ8_Score", "Gender", "PHQ8_NoInterest"]
    split_file("train_split_Depression_AVEC2017.csv", header, [
        [300, 0, 3, 1, 0], [301, 1, 15, 0, 2], [302, 0, 2, 1, 0], [303, 1, 12, 0, 1], [304, 0, 1, 1, 0],
        [305, 1, 18, 0, 3], [409, 1, 6, 1, 1], [342, 0, 4, 1, 0], [373, 0, 5, 0, 0]])
    split_file("dev_split_Depression_AVEC2017.csv", header, [[310, 0, 4, 1, 0], [311, 1, 14, 0, 2]])
    split_file("full_test_split.csv", ["Participant_ID", "PHQ_Binary", "PHQ_Score", "Gender"],
               [[320, 1, 20, 0], [321, 0, 2, 1]])
    return cases


def make_tone_manifest(root: Path, sessions_per_split=(8, 4, 4), seconds: float = 6.0) -> Path:
    """Sessions whose class decides their pitch (label 1: low, steady; label 0: high), split by speaker."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    number = 0
    for split, count in zip(("train", "validation", "test"), sessions_per_split):
        for index in range(count):
            label = index % 2
            pitch = 95 + 10 * (number % 3) if label else 210 + 15 * (number % 4)
            name = f"s{number:02d}.wav"
            soundfile.write(root / name, voice(seconds, pitch, 0.1 + 0.02 * (number % 3), number), RATE,
                            subtype="PCM_16")
            rows.append([f"p{number:02d}", label, name, split])
            number += 1
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["participant_id", "label", "audio_path", "split"])
        writer.writerows(rows)
    return root / "manifest.csv"


def write_tiny_recipe(path: Path, manifest: Path, **sections: dict) -> Path:
    """A recipe of the tiny preset on `manifest`, 4 s chunks, two epochs a stage, written to `path`; each
    keyword is a [section] whose keys replace or add to the defaults."""
    import tomli_w

    recipe = {"data": {"format": "manifest", "path": str(manifest), "cache_dir": "cache"},
              "speech": {"chunk_seconds": 4.0, "min_last_chunk_seconds": 1.0},
              "model": {"preset": "tiny"}, "stage1": {"epochs": 2}, "stage2": {"epochs": 2},
              "run": {"output": "out", "progress": False, "tsne": False}}
    for name, values in sections.items():
        recipe[name] = recipe.get(name, {}) | values
    path.write_text(tomli_w.dumps(recipe))
    return path
