"""The demo checkpoint's recipe: synthetic speech the project makes itself, then the normal trainer.

    moodstream demo-checkpoint            # regenerates moodstream/assets/demo-checkpoint from scratch

What it learns is a PROXY, not depression: espeak-ng reads everyday sentences
either slowly, low-pitched, with a narrow pitch range, long pauses and less
volume ("slowed" delivery, label 1, a caricature of psychomotor slowing) or
quickly, higher-pitched, with a wide pitch range and short pauses ("lively",
label 0). Each synthetic speaker (an espeak-ng voice + variant) records one
session of each kind, with per-session jitter on every setting, and folds are
speaker-disjoint. The demo's scores then move visibly and for a reason one can
hear, which is all the demo needs; nothing clinical can be read from them.

The architecture is a small wav2vec2-shaped model (about 0.2 M parameters),
so a 7 s chunk encodes in a few milliseconds on two CPU cores.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

DEMO_NOTE = ("Demo model trained on synthetic espeak-ng speech: slowed, low, flat delivery (label 1) vs lively "
             "delivery (label 0), a proxy for psychomotor slowing. It is not a depression model and its scores "
             "mean nothing clinically.")
# What the demo model's probability means (shown beside its scores).
DEMO_DESCRIPTION = {
    "training_data": "synthetic espeak-ng speech of 30 synthetic speakers",
    "positive_class": "slowed, low, flat delivery (a stand-in for psychomotor slowing, not depression)",
    "demo_model": True,
}

SENTENCES = [
    "I got up early this morning and made some coffee.",
    "The bus was late again, so I walked to work.",
    "My sister called me yesterday to talk about her new job.",
    "We usually have dinner together on Sunday evenings.",
    "I have been reading a book about the history of the city.",
    "The weather has been cold and grey for most of the week.",
    "On weekends I like to go for a long walk in the park.",
    "I tried to fix the kitchen tap but it still drips.",
    "My neighbour has a small dog that barks at the postman.",
    "Last summer we drove to the coast for a few days.",
    "I am not sure what I will cook for dinner tonight.",
    "Work has been busy since two people left the team.",
    "I watched a documentary about the ocean last night.",
    "We planted tomatoes and beans in the garden this spring.",
    "My friend is moving to another town next month.",
    "I should probably call my parents more often.",
    "The shop on the corner closes early on Mondays.",
    "I spent most of the afternoon cleaning the house.",
    "There is a concert in the square on Friday night.",
    "Sometimes I listen to the radio while I am driving.",
    "I need to renew my library card before the weekend.",
    "We had a long meeting about the new schedule today.",
    "My brother is teaching his son how to ride a bicycle.",
    "The train was crowded, so I stood the whole way home.",
]

VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-us-nyc",
          "en-gb-x-gbcwmd"]
VARIANTS = ["m1", "m3", "f1", "f2", "m5", "f4"]

# Per-style espeak-ng settings: (low, high) ranges drawn per session.
STYLES = {
    "slowed": {"speed": (90, 120), "pitch": (10, 30), "range": "x-low", "gap": (12, 25), "amplitude": (70, 95)},
    "lively": {"speed": (165, 205), "pitch": (50, 80), "range": "x-high", "gap": (0, 6), "amplitude": (100, 140)},
}


def demo_model_settings() -> dict:
    """The [model] table of the demo recipe: wav2vec2-shaped, small enough for 2 CPU cores."""
    return {
        "preset": "tiny",
        "fine_tuning": "all",
        "conv_channels": 32,
        "lstm_hidden_size": 32,
        "attention_size": 32,
        "dropout": 0.1,
        "backbone": "demo-wav2vec2-small",
        "backbone_config": {
            "model_type": "wav2vec2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 128, "conv_dim": [32] * 7, "conv_stride": [5, 2, 2, 2, 2, 2, 2],
            "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 4, "feat_extract_norm": "group", "do_stable_layer_norm": False,
            "layerdrop": 0.0, "mask_time_prob": 0.0},
    }


def require_espeak() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise ValueError("espeak-ng is not installed, and the demo recipe synthesises its speech with it: "
                         "install it (Debian/Ubuntu: apt-get install -y espeak-ng) and run again")
    return binary


def synthesize(text: str, voice: str, style: str, rng: np.random.Generator, path: Path, binary: str) -> None:
    settings = STYLES[style]
    speed = int(rng.integers(*settings["speed"]))
    pitch = int(rng.integers(*settings["pitch"]))
    gap = int(rng.integers(*settings["gap"])) if settings["gap"][1] > settings["gap"][0] else settings["gap"][0]
    amplitude = int(rng.integers(*settings["amplitude"]))
    ssml = f'<speak><prosody range="{settings["range"]}">{text}</prosody></speak>'
    subprocess.run([binary, "-v", voice, "-s", str(speed), "-p", str(pitch), "-g", str(gap), "-a", str(amplitude),
                    "-m", "-w", str(path), ssml], check=True, capture_output=True, timeout=60)


def synthesize_session(style: str, voice: str, sentences: list[str], rng: np.random.Generator, path: Path,
                       binary: str | None = None, pause_seconds: tuple[float, float] = (0.2, 0.6),
                       seconds: float | None = None) -> float:
    """One session: the sentences in `style`, joined with short pauses and faint noise -> 16 kHz WAV.

    With `seconds`, sentences are read until the session is that long and it is cut there, so both
    styles give sessions of the same length (the session head must not score length). Returns seconds.
    """
    import soundfile
    import soxr

    binary = binary or require_espeak()
    pieces = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, sentence in enumerate(sentences):
            if seconds is not None and sum(len(p) for p in pieces) >= seconds * 16000:
                break
            wav = Path(scratch) / f"{index}.wav"
            synthesize(sentence, voice, style, rng, wav, binary)
            audio, rate = soundfile.read(wav, dtype="float32", always_2d=True)
            audio = soxr.resample(audio.mean(axis=1), rate, 16000)
            pieces.append(audio)
            pieces.append(np.zeros(int(16000 * rng.uniform(*pause_seconds)), dtype=np.float32))
    wave = np.concatenate(pieces)
    if seconds is not None:
        wave = wave[: int(seconds * 16000)]
    wave = wave + rng.normal(0, 0.002, wave.shape).astype(np.float32)
    soundfile.write(path, np.clip(wave, -1, 1), 16000, subtype="PCM_16")
    return len(wave) / 16000


def generate_corpus(folder: Path, seed: int = 0, session_seconds: float = 35.0) -> Path:
    """Write the WAVs and manifest.csv (speaker-disjoint train/validation/test) into `folder`."""
    binary = require_espeak()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    speakers = [f"{voice}+{variant}" for voice in VOICES for variant in VARIANTS]
    rng.shuffle(speakers)
    speakers = speakers[:30]
    splits = ["test"] * 5 + ["validation"] * 5 + ["train"] * 20
    rows = []
    for number, (speaker, split) in enumerate(zip(speakers, splits)):
        for style, label in (("slowed", 1), ("lively", 0)):
            chosen = [SENTENCES[i] for i in rng.permutation(len(SENTENCES))]
            name = f"spk{number:02d}-{style}.wav"
            synthesize_session(style, speaker, chosen, rng, folder / name, binary, seconds=session_seconds)
            rows.append({"participant_id": f"spk{number:02d}-{style}", "speaker_id": f"spk{number:02d}",
                         "label": label, "audio_path": name, "split": split})
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["participant_id", "speaker_id", "label", "audio_path", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "manifest.csv"


def default_output() -> Path:
    import moodstream

    return Path(moodstream.__file__).parent / "assets" / "demo-checkpoint"


def build_demo_checkpoint(output: str | Path | None = None, work: str | Path = "runs/demo-checkpoint",
                          seed: int = 0, resume: bool = False) -> Path:
    """Synthesise the corpus, train the demo model on it, copy the checkpoint and a TRAINING.md to `output`.

    With `resume`, an interrupted build in `work` continues (its corpus is kept, training resumes from its
    last finished epoch); otherwise `work` starts from scratch.
    """
    from moodstream.model import ScreeningModel
    from moodstream.trainer.config import TrainConfig
    from moodstream.trainer.prefixes import prefix_markdown
    from moodstream.trainer.train import train

    require_espeak()
    work = Path(work).expanduser().resolve()
    manifest = work / "audio" / "manifest.csv"
    if not (resume and manifest.is_file()):
        if work.exists():
            shutil.rmtree(work)  # from scratch
        manifest = generate_corpus(work / "audio", seed=seed)
    config = TrainConfig.from_dict({
        "data": {"format": "manifest", "path": str(manifest), "cache_dir": str(work / "cache")},
        "model": demo_model_settings() | DEMO_DESCRIPTION | {
            "notes": {"recipe": "moodstream demo-checkpoint", "seed": seed, "what_it_learned": DEMO_NOTE}},
        # 16 epochs: validation loss is below 0.01 by epoch 14 on this corpus.
        "stage1": {"lr_backbone": 1e-3, "epochs": 16},
        "stage2": {"lr_head": 3e-3, "epochs": 100},
        "run": {"output": str(work / "run"), "seed": seed, "progress": False, "tsne": False},
    })
    result = train(config)
    target = Path(output).expanduser() if output else default_output()
    model = ScreeningModel.from_pretrained(result["checkpoint"])
    # A build resumed from a run that predates the description still ships it.
    model.config = model.config.replace(**DEMO_DESCRIPTION)
    model.save_pretrained(target)
    test = result["test"]
    (target / "TRAINING.md").write_text(
        "# Demo checkpoint\n\n"
        f"{DEMO_NOTE}\n\n"
        "Regenerate from scratch with `moodstream demo-checkpoint` (needs espeak-ng; installs nothing itself).\n\n"
        f"* model_version: {model.model_version}\n"
        f"* parameters: {model.parameter_counts()['total']:,}\n"
        f"* corpus: 30 synthetic speakers x 2 sessions of 35 s (slowed / lively), speaker-disjoint 20/5/5 "
        "train/validation/test\n"
        f"* decision threshold (chosen on validation): {model.config.decision_threshold:.3f}\n"
        f"* held-out test sessions: F1 {test['session']['f1']:.3f}, AUC {test['session']['auc']:.3f}; "
        f"segments: AUC {test['segment']['auc']:.3f}\n"
        f"* training recipe: {TrainConfig.load(work / 'run' / 'config.toml').run.recipe}; calibration (fitted on "
        "validation prefixes): "
        f"{json.dumps(model.config.notes.get('calibration'))}\n"
        f"* evidence rule (chosen on validation): no label before {model.config.min_evidence_segments} "
        f"segment(s), about {model.config.min_evidence_segments * model.config.segment_seconds:.0f} s of speech\n\n"
        "Held-out test sessions, scored after k segments (what a live subscriber sees):\n\n"
        f"{prefix_markdown(test['prefix'], test['prefix_uncalibrated'])}\n")
    (target / "training_result.json").write_text(json.dumps(
        {k: result[k] for k in ("threshold", "segment_threshold")} |
        {"test": {"session": test["session"], "segment": test["segment"]}}, indent=2, default=float))
    return target
