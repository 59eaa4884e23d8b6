"""`moodstream standin-sweep`: choose small-data settings on the stand-in's validation folds only.

Each setting is the stand-in's frozen-Whisper model row (small-data recipe) with a
few `section.key=value` overrides. Every fold trains on its training actors and
early-stops on its validation fold, exactly as `moodstream standin` does; the sweep
reports the AUCs pooled over the 6 validation folds (36 sessions, each scored by the
model that validated on it) and never reads a test prediction, so a setting chosen
here has not seen the test folds. Settings that change only stage 2 start from the
first setting's finished stage 1 (same seed, same features: the same stage-1 weights).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

# Overrides that leave stage 1 as it is (the session head's own settings).
STAGE2_ONLY = ("stage2.", "scoring.", "model.session_time_pooling=", "model.lstm_hidden_size=",
               "model.attention_size=", "model.session_skip=")
RESULT_FILE = "sweep_result.json"


def parse_setting(text: str) -> tuple[str, list[str]]:
    """'name:section.key=value,section.key=value' (no overrides: 'name:') -> (name, overrides)."""
    name, _, rest = text.partition(":")
    if not name or not _:
        raise ValueError(f"a setting is NAME:section.key=value[,section.key=value...], got {text!r}")
    return name, [item for item in rest.split(",") if item]


def validation_aucs(row_folder: Path) -> dict:
    """AUCs pooled over every fold's validation predictions, plus the stopping epochs."""
    from sklearn.metrics import roc_auc_score

    session_labels, session_probs, segment_labels, segment_probs, epochs = [], [], [], [], []
    chosen_losses, uncalibrated_losses = [], []
    for result_path in sorted(row_folder.glob("fold-*/result.json")):
        result = json.loads(result_path.read_text())
        p = result["validation"]["predictions"]
        session_labels += p["session_labels"]
        session_probs += p["session_probabilities"]
        segment_labels += p["segment_labels"]
        segment_probs += p["segment_probabilities"]
        epochs.append((result.get("stage1_epochs"), result.get("stage2_epochs")))
        calibration = result.get("calibration") or {}
        if calibration.get("held_out_log_loss"):
            chosen_losses.append(calibration["held_out_log_loss"][calibration["chosen"]])
            uncalibrated_losses.append(calibration["held_out_log_loss"]["none"])
    out = {"validation_session_auc": float(roc_auc_score(session_labels, session_probs)),
           "validation_segment_auc": float(roc_auc_score(segment_labels, segment_probs)),
           "sessions": len(session_labels), "segments": len(segment_labels), "epochs": epochs}
    if chosen_losses:  # cross-fitted: the calibrated score's log loss on the training actors, never the test folds
        out["out_of_fold_log_loss"] = sum(chosen_losses) / len(chosen_losses)
        out["out_of_fold_log_loss_uncalibrated"] = sum(uncalibrated_losses) / len(uncalibrated_losses)
    return out


def run_sweep(data: str, output: str, whisper: str, settings: list[str]) -> str:
    from moodstream.trainer.config import TrainConfig, apply_overrides
    from moodstream.trainer.standin_run import MODEL_ROW, _row_configs
    from moodstream.trainer.train import train

    output_path = Path(output).expanduser().resolve()
    whisper_path = Path(whisper).expanduser().resolve()
    if not (whisper_path / "config.json").is_file():
        raise ValueError(f"no converted Whisper at {whisper_path}; run `moodstream import-whisper` first")
    base = _row_configs(str(Path(data).expanduser()), output_path, whisper_path)[MODEL_ROW]["config"]
    parsed = [parse_setting(text) for text in settings]
    first_folder = output_path / "sweep" / parsed[0][0] if parsed else None
    for name, overrides in parsed:
        folder = output_path / "sweep" / name
        values = json.loads(json.dumps(base))
        values["run"] |= {"output": str(folder), "tsne": False}
        apply_overrides(values, overrides)
        config = TrainConfig.from_dict(values)
        if folder != first_folder and all(o.startswith(STAGE2_ONLY) for o in overrides):
            for finished in sorted(first_folder.glob("fold-*/stage1.pt")):
                target = folder / finished.parent.name / "stage1.pt"
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(finished, target)
        result_path = folder / RESULT_FILE
        if result_path.is_file():  # finished by an earlier sweep (kept as written, so the table keeps its order)
            result = json.loads(result_path.read_text())
        else:
            started = time.monotonic()
            train(config)
            result = {"overrides": overrides, **validation_aucs(folder), "seconds": time.monotonic() - started}
            result_path.write_text(json.dumps(result, indent=2))
        print(f"{name}: validation session AUC {100 * result['validation_session_auc']:.1f}, "
              f"segment AUC {100 * result['validation_segment_auc']:.1f}", flush=True)
    # Every setting run so far in this folder (several sweeps may run side by side), oldest first.
    finished = sorted((output_path / "sweep").glob(f"*/{RESULT_FILE}"), key=lambda p: p.stat().st_mtime)
    results = {path.parent.name: json.loads(path.read_text()) for path in finished}
    (output_path / "sweep.json").write_text(json.dumps(results, indent=2))
    table = sweep_table(results)
    (output_path / "sweep.md").write_text(
        "# Stand-in sweep: pooled validation AUCs (the test folds are not read)\n\n" + table + "\n")
    return table


def sweep_table(results: dict) -> str:
    lines = ["| setting | overrides of small-data | validation session AUC (36) | validation segment AUC | "
             "OOF log loss, calibrated (uncalibrated) | epochs run (stage 1 / stage 2, per fold) |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        epochs = " ".join(f"{a}/{b}" for a, b in r["epochs"])
        oof = (f"{r['out_of_fold_log_loss']:.4f} ({r['out_of_fold_log_loss_uncalibrated']:.4f})"
               if "out_of_fold_log_loss" in r else "n/a")
        lines.append(f"| {name} | {', '.join(r['overrides']) or '(none)'} | {100 * r['validation_session_auc']:.1f} | "
                     f"{100 * r['validation_segment_auc']:.1f} | {oof} | {epochs} |")
    return "\n".join(lines)
