"""The long-session check: is a checkpoint's session score calibrated, and does it rank as well, after 20
segments of an interview as after 5?

    moodstream long-session-check moodstream/assets/demo-checkpoint --output runs/long-sessions

The training corpora hold short sessions (the demo's 42 s give about 5 segments), so nothing there shows
how the score behaves after 20 segments, or whether it drifts with session length alone. This check
synthesises long sessions with the demo recipe's generator (trainer/demo_recipe.py: espeak-ng speakers
reading with a slowed, label 1, or a lively, label 0, delivery drawn from overlapping distributions, in
background noise), one session of each delivery per speaker, each long enough that the speech path keeps
enough speech for the largest reported segment count in whole chunks (20 x 7 s = 140 s by default). A
session's delivery is drawn once and held, so later segments carry no new kind of evidence: a shift of both
classes' mean score with k is the score's response to length alone.

Held-out speakers: a demo-recipe corpus of seed s uses `corpus_speakers(default_rng(s))` (train,
validation and test together), and this check draws its speakers from every other voice of the recipe's
pool, leaving out the corpus of the checkpoint's recorded demo-recipe seed (seed 0 when it records none)
and of any --exclude-corpus-seed. The deliveries and sentence orders come from their own random stream
(the check's seed), never from a corpus's.

Sessions are cut by the one speech path (trainer/segments.py `build_segments`, the checkpoint's own speech
settings, as `moodstream evaluate` cuts them), every segment is encoded alone (as the server does), and
the calibrated probability after each segment comes from `trainer.prefixes.prefix_probabilities`; the
interval, when the checkpoint carries one, from `model.calibration.score` on the same logit parts
(`trainer.prefixes.scored_prefixes`), and its coverage is the training reports' (`trainer.prefixes`).
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from moodstream import SCREENING_NOTICE
from moodstream.trainer import demo_recipe
from moodstream.trainer.long_session_metrics import (every_k_table, goal_markdown, goal_verdict, long_session_png,
                                                     reliability, reliability_markdown, row_at, speaker_bootstrap,
                                                     summary_table)

REPORT_AT = (2, 5, 10, 20)
DEFAULT_SPEAKERS = 40
DEFAULT_SEED = 1
CORPUS_FORMAT = 2
# The share of a synthetic session's audio the speech path keeps is 0.8-0.87 (the rest is pauses); the
# first try asks for a little more audio than that share implies, and a short session is read again longer.
KEPT_SHARE_GUESS = 0.75
LONGER = 1.3
TRIES = 4
# The random stream of the check's sessions: an entropy word of its own, so no seed meets a corpus's stream.
STREAM = 0x10265E55


def checkpoint_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ValueError(f"no checkpoint at {folder}: pass the folder `moodstream train` or "
                         "`moodstream demo-checkpoint` wrote")
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file: pass the checkpoint's folder (the one holding config.json)")
    return folder


def output_folder(path: str | Path, option: str) -> Path:
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder} is a file, not a folder")
    return folder


def training_corpus(model) -> tuple[int, int, str]:
    """The demo-recipe seed and corpus size that trained (and validated) `model`, and how they are known.
    A checkpoint built before the corpus size was an option used the recipe's default size."""
    notes = model.config.notes or {}
    seed, speakers = notes.get("seed"), notes.get("corpus_speakers", demo_recipe.UNRECORDED_CORPUS_SPEAKERS)
    if notes.get("recipe") == "moodstream demo-checkpoint" and isinstance(seed, int) and isinstance(speakers, int):
        return seed, speakers, f"the demo-recipe seed and corpus size the checkpoint records ({seed}, {speakers})"
    return 0, demo_recipe.SPEAKERS, (f"the demo recipe's default seed (0) and size ({demo_recipe.SPEAKERS}): the "
                                     "checkpoint records no demo-recipe seed")


def held_out_voices(excluded_seeds, speakers: int = demo_recipe.SPEAKERS) -> list[str]:
    """The recipe's voices that no demo-recipe corpus of `excluded_seeds` and `speakers` speakers uses, in the
    pool's order. A smaller corpus of the same seed is part of a larger one (demo_recipe.corpus_speakers)."""
    used = {voice for seed in excluded_seeds
            for voice in demo_recipe.corpus_speakers(np.random.default_rng(seed), speakers)}
    return [voice for voice in demo_recipe.recipe_voices() if voice not in used]


def draw_speakers(pool: list[str], count: int, seed: int) -> list[str]:
    if not 2 <= count <= len(pool):
        raise ValueError(f"--speakers must be between 2 and {len(pool)} (the held-out voices), got {count}")
    rng = np.random.default_rng([STREAM, seed])
    return [pool[i] for i in rng.permutation(len(pool))[:count]]


def corpus_spec(voices: list[str], seed: int, min_segments: int, speech) -> dict:
    """Everything the sessions depend on: a folder holding the same spec is reused as it is."""
    recipe = {name: getattr(demo_recipe, name) for name in ("STYLES", "SPEAKER_SPREAD", "SENTENCE_JITTER",
                                                            "NOISE_SNR_DB", "AMPLITUDE", "SENTENCES")}
    return json.loads(json.dumps({"format": CORPUS_FORMAT, "seed": seed, "voices": voices,
                                  "min_segments": min_segments, "speech": speech.as_dict(), "recipe": recipe}))


def generate_long_sessions(folder: Path, voices: list[str], seed: int, min_segments: int, speech,
                           progress: bool = True) -> Path:
    """One slowed (label 1) and one lively (label 0) session per voice, each with enough speech kept by the speech
    path for at least `min_segments` whole chunks; manifest.csv and sessions.csv (each session's delivery) into
    `folder`."""
    from tqdm import tqdm

    from moodstream.trainer.segments import SegmentParams, decode, session_chunks

    spec = corpus_spec(voices, seed, min_segments, speech)
    manifest = folder / "manifest.csv"
    spec_file = folder / "corpus.json"
    if manifest.is_file() and spec_file.is_file() and json.loads(spec_file.read_text()) == spec:
        return manifest
    binary = demo_recipe.require_espeak()
    folder.mkdir(parents=True, exist_ok=True)
    spec_file.unlink(missing_ok=True)  # a half-written corpus is never taken for a finished one
    params = SegmentParams(speech)
    needed = min_segments * speech.chunk_seconds
    rows, details = [], []
    bar = tqdm(total=2 * len(voices), desc="synthesising long sessions", unit="session", disable=not progress)
    for number, voice in enumerate(voices):
        rng = np.random.default_rng([STREAM, seed, number])
        habits = {key: float(rng.normal(0, spread)) for key, spread in demo_recipe.SPEAKER_SPREAD.items()}
        for style, label in (("slowed", 1), ("lively", 0)):
            delivery = demo_recipe.draw_delivery(style, habits, rng)
            participant = f"long{number:03d}-{style}"
            path = folder / f"{participant}.wav"
            seconds = needed / KEPT_SHARE_GUESS
            for _ in range(TRIES):
                # Enough sentences for the target at any recipe rate (24 sentences last over a minute).
                readings = math.ceil(seconds / 60) + 1
                sentences = [demo_recipe.SENTENCES[i] for _ in range(readings)
                             for i in rng.permutation(len(demo_recipe.SENTENCES))]
                demo_recipe.synthesize_session(delivery, voice, sentences, rng, path, binary, seconds=seconds)
                capture = session_chunks(decode(str(path), None), params)
                # Kept speech for `min_segments` whole chunks: no reported count ends on a partial last chunk.
                if capture.kept_seconds >= needed:
                    break
                seconds *= LONGER
            rows.append({"participant_id": participant, "speaker_id": f"long{number:03d}", "label": label,
                         "audio_path": path.name})
            details.append({"participant_id": participant, "voice": voice, "style": style,
                            "audio_seconds": round(seconds, 1), "kept_seconds": round(capture.kept_seconds, 1),
                            "segments": len(capture.chunks)} | {k: v for k, v in delivery.items() if k != "pause"})
            bar.update()
    bar.close()
    for name, table in (("sessions.csv", details), ("manifest.csv", rows)):
        with open(folder / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    spec_file.write_text(json.dumps(spec, indent=1))
    return manifest


def parse_segment_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--at {text!r} is not a comma-separated list of segment counts (e.g. 2,5,10,20)") from None
    if len(counts) < 2 or min(counts) < 1 or counts != sorted(set(counts)):
        raise ValueError(f"--at {text!r}: give at least two increasing segment counts of 1 or more (e.g. 2,5,10,20)")
    return counts


def score_prefixes(model, store, progress: bool = True) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Per session, the calibrated probability after each segment and, when the checkpoint carries an
    interval, its (low, high) after each segment."""
    import torch
    from tqdm import tqdm

    from moodstream.trainer.prefixes import prefix_logit_parts, prefix_probabilities, scored_prefixes

    sequences = []
    # One segment is too little work for a second thread, which on a shared machine spin-waits for a busy
    # core: measured 20-30 ms per 7 s segment on one thread against 0.5-1.5 s on two, at load 4 on two cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for item in tqdm(store.sessions, desc="encoding segments", unit="session", disable=not progress):
                # One segment at a time, as the server encodes them: no padding inside a batch.
                sequences.append(torch.cat([model.encode_segments([store.pcm(i)], model.config.sample_rate)
                                            for i in item.segments]))
    finally:
        torch.set_num_threads(threads)
    probabilities = prefix_probabilities(model, sequences)
    # The interval through SessionCalibration.score, as the batch and incremental scorers compute it.
    _, low, high = scored_prefixes(model.calibration, prefix_logit_parts(model.session_head, sequences))
    if low is None:
        return probabilities, None
    return probabilities, [np.stack([lows, highs], axis=1) for lows, highs in zip(low, high)]


def run_long_session_check(checkpoint: str | Path, output: str | Path, speakers: int = DEFAULT_SPEAKERS,
                           seed: int = DEFAULT_SEED, report_at=REPORT_AT, audio: str | Path | None = None,
                           exclude_seeds=(), cache_dir: str | Path = "~/.cache/moodstream/segments",
                           device: str = "auto", progress: bool = True) -> dict:
    """Synthesise long sessions of held-out speakers, score every prefix with `checkpoint`, and write
    report.md, result.json and long_sessions.png into `output`."""
    from moodstream.model import ScreeningModel, pick_device
    from moodstream.trainer.evaluate import checkpoint_speech, speech_summary
    from moodstream.trainer.manifest import read_manifest
    from moodstream.trainer.segments import SegmentParams, build_segments

    started, load_before = time.monotonic(), os.getloadavg()
    report_at = [int(k) for k in report_at]
    output = output_folder(output, "--output")
    audio = output_folder(audio if audio is not None else output / "audio", "--audio")
    model = ScreeningModel.from_pretrained(checkpoint_folder(checkpoint))
    model.to(pick_device(device)).eval()
    speech, speech_note = checkpoint_speech(model)
    trained_seed, corpus_size, seed_source = training_corpus(model)
    excluded = sorted({trained_seed, *exclude_seeds})
    # Other seeds' corpora are left out at the larger of the two sizes: that holds the default-size corpus.
    excluded_size = max(corpus_size, demo_recipe.SPEAKERS)
    voices = draw_speakers(held_out_voices(excluded, excluded_size), speakers, seed)
    timings = {}

    mark = time.monotonic()
    manifest = generate_long_sessions(audio, voices, seed, report_at[-1], speech, progress)
    timings["synthesis_seconds"] = time.monotonic() - mark
    mark = time.monotonic()
    dataset = read_manifest(manifest)
    store = build_segments(dataset, SegmentParams(speech), Path(cache_dir).expanduser(), progress=progress)
    timings["segmenting_seconds"] = time.monotonic() - mark
    mark = time.monotonic()
    probabilities, intervals = score_prefixes(model, store, progress)
    timings["scoring_seconds"] = time.monotonic() - mark

    sessions = [item.session for item in store.sessions]
    labels = np.asarray([s.label for s in sessions], dtype=int)
    speaker_ids = [s.speaker_id for s in sessions]
    segments = [len(p) for p in probabilities]
    level = model.calibration.level
    rows = {k: row_at(k, labels, probabilities, intervals, level) for k in range(1, report_at[-1] + 1)}
    for k in report_at:
        rows[k]["reliability"] = reliability(labels[[n >= k for n in segments]],
                                             [p[k - 1] for p in probabilities if len(p) >= k])
    bootstrap = {k: speaker_bootstrap(k, labels, speaker_ids, probabilities) for k in report_at}
    goal = goal_verdict(rows, report_at[1:], report_at[-1])
    timings["wall_seconds"] = time.monotonic() - started
    result = {
        "checkpoint": str(checkpoint), "model_version": model.model_version,
        "calibration": (model.config.notes or {}).get("calibration"), "has_interval": intervals is not None,
        "interval_level": model.calibration.level if intervals is not None else None,
        "speech": speech.as_dict(), "speech_note": speech_note,
        "held_out": {"excluded_corpus_seeds": excluded, "excluded_corpus_speakers": excluded_size,
                     "training_seed_from": seed_source, "voices": voices,
                     "seed": seed},
        "report_at": report_at, "rows": {str(k): r for k, r in rows.items()},
        "bootstrap": {str(k): b for k, b in bootstrap.items()}, "goal": goal,
        "failed_sessions": store.failed,
        "sessions": [{"session_id": s.session_id, "speaker_id": s.speaker_id, "label": int(s.label),
                      "segments": n, "prefix_probabilities": [float(x) for x in p]}
                     | ({"prefix_intervals": b.tolist()} if intervals is not None else {})
                     for s, n, p, b in zip(sessions, segments, probabilities, intervals or [None] * len(sessions))],
        "timings": timings, "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "result.json").write_text(json.dumps(result, indent=1, default=float))
    long_session_png(rows, output / "long_sessions.png",
                     f"{Path(checkpoint).name}: {len(sessions)} long sessions of {len(voices)} held-out speakers")
    (output / "report.md").write_text(report_markdown(result, rows, bootstrap, goal, speech_summary(speech)))
    return result


def report_markdown(result: dict, rows: dict, bootstrap: dict, goal: dict, speech_text: str) -> str:
    sessions = result["sessions"]
    counts = [s["segments"] for s in sessions]
    held = result["held_out"]
    timings = result["timings"]
    interval = (f"yes, {100 * result['interval_level']:.0f} % (coverage, as in the training reports: the share of "
                "predictions whose interval holds the outcome rate of their bin, 5 equal-count bins by score; "
                "sampled: the same, allowing for each bin's sampling noise)") if result["has_interval"] else \
        "no: the checkpoint carries no interval replicates, so coverage is n/a"
    report_at = result["report_at"]
    lines = [
        f"# Long-session check: {Path(result['checkpoint']).name}", "", f"> {SCREENING_NOTICE}", "",
        f"The score after exactly k segments of {len(sessions)} long synthetic sessions ({len(held['voices'])} "
        f"held-out speakers, one slowed (label 1) and one lively (label 0) session each; {min(counts)}-"
        f"{max(counts)} segments per session, median {int(np.median(counts))}). Each session's delivery is drawn "
        "once and held for its whole length, so a shift of both classes' mean score with k is the score's "
        "response to length alone. AUC and ECE carry 90 % speaker-bootstrap intervals; ECE uses 10 equal-width "
        "bins.", "",
        summary_table(rows, report_at, bootstrap), "",
        goal_markdown(goal), "",
        "![mean score, AUC and ECE after k segments](long_sessions.png)", "",
        "## Reliability", "",
        "Per equal-width score bin (the ECE's): sessions in the bin, their mean score → the share of them with "
        "label 1.", "",
        reliability_markdown(rows, report_at), "",
        "## Every segment count", "", every_k_table(rows), "",
        "## How it was made", "",
        f"* checkpoint: {result['checkpoint']} (model {result['model_version']}); calibration: "
        f"{json.dumps(result['calibration'])}; interval: {interval}",
        f"* speech path: {speech_text}" + (f" ({result['speech_note']})" if result["speech_note"] else ""),
        f"* held-out speakers: drawn (check seed {held['seed']}) from the demo recipe's voices outside the "
        f"corpora of seed(s) {', '.join(map(str, held['excluded_corpus_seeds']))} (training seed from "
        f"{held['training_seed_from']}): {', '.join(held['voices'])}",
        f"* wall time {timings['wall_seconds'] / 60:.1f} min (synthesis {timings['synthesis_seconds']:.0f} s, "
        f"speech path {timings['segmenting_seconds']:.0f} s, encoding and scoring {timings['scoring_seconds']:.0f} "
        f"s) on {result['cpu_count']} CPU core(s); load average (1, 5, 15 min) before "
        f"{', '.join(f'{x:.2f}' for x in result['load_average_before'])}, after "
        f"{', '.join(f'{x:.2f}' for x in result['load_average_after'])}",
    ]
    if result["failed_sessions"]:
        lines.append(f"* sessions the speech path could not cut: {json.dumps(result['failed_sessions'])}")
    return "\n".join(lines) + "\n"

