"""A small labelled speech corpus the project makes itself: `moodstream synth-corpus FOLDER`.

The demo checkpoint's generator (trainer/demo_recipe.py) at a size that trains in about a minute on two CPU
cores (configs/tiny-offline.toml): espeak-ng voices read everyday sentences with a "slowed" delivery (label 1)
or a "lively" one (label 0), each speaker one session of each, speaker-disjoint splits. What a model learns
from it is a proxy for psychomotor slowing at best, never depression; the corpus is there so that training can
be run, end to end and offline, without a clinical data set.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

SPEAKERS = 12
SESSION_SECONDS = 21.0  # three 7 s segments before the speech path drops the pauses
SPLIT_SHARES = (("train", 0.5), ("validation", 0.25), ("test", 0.25))


def splits_for(speakers: int) -> list[str]:
    """Each speaker's split, train first: at least one speaker in every split."""
    counts = {name: max(1, round(share * speakers)) for name, share in SPLIT_SHARES}
    counts["train"] = speakers - counts["validation"] - counts["test"]
    if counts["train"] < 1:
        raise ValueError(f"--speakers must be at least 3 (one per split), got {speakers}")
    return [name for name, _ in SPLIT_SHARES for _ in range(counts[name])]


def generate(folder: str | Path, speakers: int = SPEAKERS, session_seconds: float = SESSION_SECONDS,
             seed: int = 0) -> Path:
    """Write `speakers` x 2 sessions as 16 kHz WAVs and their manifest.csv into `folder`; return the manifest."""
    from moodstream.trainer.demo_recipe import (SENTENCES, SPEAKER_SPREAD, corpus_speakers, draw_delivery,
                                                require_espeak, synthesize_session)

    if session_seconds < 5:
        raise ValueError(f"--seconds must be at least 5 (a session needs speech for a segment), got {session_seconds:g}")
    splits = splits_for(speakers)
    binary = require_espeak()
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    voices = corpus_speakers(rng)
    if speakers > len(voices):
        raise ValueError(f"--speakers can be at most {len(voices)} (the espeak-ng voices used), got {speakers}")
    rows = []
    for number, (voice, split) in enumerate(zip(voices, splits)):
        habits = {key: float(rng.normal(0, spread)) for key, spread in SPEAKER_SPREAD.items()}
        for style, label in (("slowed", 1), ("lively", 0)):
            participant = f"spk{number:02d}-{style}"
            sentences = [SENTENCES[i] for i in rng.permutation(len(SENTENCES))]
            synthesize_session(draw_delivery(style, habits, rng), voice, sentences, rng,
                               folder / f"{participant}.wav", binary, seconds=session_seconds)
            rows.append({"participant_id": participant, "speaker_id": f"spk{number:02d}", "label": label,
                         "audio_path": f"{participant}.wav", "split": split})
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest
