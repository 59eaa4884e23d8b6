"""`moodstream standin`: the RAVDESS stand-in evaluation, model variants beside the openSMILE baselines.

Acted emotion (sad vs calm sessions per actor), NOT depression. Every row
uses the same 36 sessions, the same 6 actor-disjoint folds, the same
segmentation and the same rule for thresholds (chosen on each fold's
validation fold). Results go to <output>/standin.md and standin.json.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from moodstream.trainer.standin import STANDIN_NOTE


def _row_configs(data: str, output: Path, whisper: Path) -> dict[str, dict]:
    common_data = {"format": "ravdess-standin", "path": str(Path(data).resolve()),
                   "cache_dir": str(output / "segment-cache")}
    run = lambda name: {"output": str(output / name), "seed": 0, "progress": False}  # noqa: E731
    return {
        "whisper-pretrained-frozen": {
            "label": "model: Whisper tiny.en encoder, pretrained, frozen + the paper's heads",
            "config": {"data": common_data, "run": run("whisper-pretrained-frozen"),
                       "model": {"backbone": str(whisper), "pretrained": True, "fine_tuning": "frozen",
                                 "normalize_waveform": False}}},
        "whisper-random-frozen": {
            "label": "model: same encoder randomly initialised, frozen + the paper's heads",
            "config": {"data": common_data, "run": run("whisper-random-frozen"),
                       "model": {"backbone": str(whisper), "pretrained": False, "fine_tuning": "frozen",
                                 "normalize_waveform": False}}},
        "tiny-wav2vec2-scratch": {
            "label": "model: tiny wav2vec2 (demo size) trained from scratch, all layers",
            "config": {"data": common_data, "run": run("tiny-wav2vec2-scratch"),
                       "model": {"preset": "tiny", "fine_tuning": "all"},
                       "stage1": {"lr_backbone": 1e-3}}},
    }


BASELINES = {
    "whisper-linear-probe": ("linear-probe", "baseline: linear probe on the same frozen pretrained Whisper tiny.en "
                             "(summed layers, mean + std, 768) + logistic regression"),
    "opensmile-is09": ("IS09_emotion", "baseline: openSMILE IS09_emotion (384) + logistic regression"),
    "opensmile-egemaps": ("eGeMAPSv02", "baseline: openSMILE eGeMAPSv02 (88) + logistic regression"),
}


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def standin_table(rows: list[dict]) -> str:
    lines = ["| system | session F1 (mean ± std) | session AUC (mean ± std) | pooled session AUC (36) | "
             "segment AUC (mean ± std) | pooled segment AUC | wall time |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        s = row["summary"]
        lines.append(
            f"| {row['label']} | {_pct(s['session_f1_mean'])} ± {_pct(s['session_f1_std'])} | "
            f"{_pct(s['session_auc_mean'])} ± {_pct(s['session_auc_std'])} | {_pct(s['pooled_session_auc'])} | "
            f"{_pct(s['segment_auc_mean'])} ± {_pct(s['segment_auc_std'])} | {_pct(s['pooled_segment_auc'])} | "
            f"{row['seconds']:.0f} s |")
    return "\n".join(lines)


def run_standin_evaluation(data: str, output: str, whisper: str | None = None, only: list[str] | None = None) -> str:
    from moodstream.trainer.baseline import run_baseline
    from moodstream.trainer.config import TrainConfig
    from moodstream.trainer.train import train

    data_path = Path(data).expanduser()
    if not (data_path / "manifest.csv").is_file():
        raise ValueError(f"no RAVDESS folder with manifest.csv at {data_path}")
    output_path = Path(output).expanduser().resolve()
    output_path.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    whisper_path = Path(whisper).expanduser().resolve() if whisper else output_path / "whisper-tiny.en"
    configs = _row_configs(str(data_path), output_path, whisper_path)
    wanted = set(only or []) or set(configs) | set(BASELINES)
    unknown = wanted - set(configs) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown stand-in row(s) {sorted(unknown)}; rows: {', '.join(list(configs) + list(BASELINES))}")
    if any(k.startswith("whisper") for k in wanted) and not (whisper_path / "config.json").is_file():
        from moodstream.trainer.whisper_import import import_whisper

        import_whisper(whisper_path)
    results_path = output_path / "standin.json"
    rows = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name, (feature_set, label) in BASELINES.items():
        if name not in wanted:
            continue
        row_started = time.monotonic()
        # The linear probe reads the pretrained encoder of the frozen-Whisper row.
        source = "whisper-pretrained-frozen" if feature_set == "linear-probe" else "tiny-wav2vec2-scratch"
        config = TrainConfig.from_dict(configs[source]["config"] | {"run": {"progress": False,
                                       "output": str(output_path / name)}})
        summary = run_baseline(config, feature_set, output_path / name)
        rows[name] = {"label": label, "summary": summary, "seconds": time.monotonic() - row_started}
        results_path.write_text(json.dumps(rows, indent=2, default=float))
    for name, spec in configs.items():
        if name not in wanted:
            continue
        row_started = time.monotonic()
        summary = train(TrainConfig.from_dict(spec["config"]))
        rows[name] = {"label": spec["label"], "summary": summary, "seconds": time.monotonic() - row_started}
        results_path.write_text(json.dumps(rows, indent=2, default=float))
    order = list(configs) + list(BASELINES)
    table = standin_table([rows[k] for k in order if k in rows])
    total = time.monotonic() - started
    (output_path / "standin.md").write_text(
        f"# Stand-in evaluation (RAVDESS, acted emotion, not depression)\n\n{STANDIN_NOTE}\n\n"
        "36 sessions (18 actors x {sad = low-mood, calm}), 6 actor-disjoint folds of 3 actors; thresholds chosen "
        "on each fold's validation fold. Positive class = the sad (low-mood) session.\n\n"
        f"{table}\n\nWall time of this invocation: {total:.0f} s.\n")
    return table
