"""Evaluation: participant- and segment-level metrics, plots and one markdown report.

Thresholds are never tuned here: training chose them on validation and wrote
them into the checkpoint (`decision_threshold`, `notes.segment_threshold`);
`moodstream evaluate` applies them unchanged. AUC needs no threshold.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moodstream import SCREENING_NOTICE
from moodstream.trainer.metrics import binary_metrics
from moodstream.trainer.prefixes import prefix_markdown, prefix_png, prefix_rows

PREFIX_NOTE = ("What a live subscriber sees: the session score after 1, 2, 3 ... segments (sessions shorter than "
               "k are left out of row k) and at 25/50/75/100 % of each session. ECE: expected calibration error, "
               "10 bins. Calibration (Platt) was fitted on validation prefixes only.")


@dataclass
class Predictions:
    session_ids: list[str]
    session_labels: np.ndarray
    session_probabilities: np.ndarray
    segment_session_ids: list[str]
    segment_labels: np.ndarray
    segment_probabilities: np.ndarray
    segment_vectors: np.ndarray | None = None
    # Per session, the score after each of its segments (trainer/prefixes.py), calibrated and before calibration.
    session_prefix_probabilities: list[np.ndarray] | None = None
    session_prefix_uncalibrated: list[np.ndarray] | None = None


def _pct(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def metrics_table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| set | level | n (positive) | threshold | precision | recall | F1 | AUC | TP | FP | TN | FN |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, metrics in rows:
        for level in ("session", "segment"):
            m = metrics[level]
            lines.append(f"| {name} | {level} | {m['n']} ({m['positives']}) | {m['threshold']:.3f} | "
                         f"{_pct(m['precision'])} | {_pct(m['recall'])} | {_pct(m['f1'])} | {_pct(m['auc'])} | "
                         f"{m['tp']} | {m['fp']} | {m['tn']} | {m['fn']} |")
    return "\n".join(lines)


def write_evaluation(folder: Path, predictions: dict[str, Predictions], threshold: float, segment_threshold: float,
                     title: str, extra: dict | None = None, tsne: bool = True, seed: int = 0,
                     data_summary: str | None = None) -> dict:
    """Metrics, prediction CSVs, PNG plots and report.md for each set in `predictions`."""
    from moodstream.trainer import plots

    folder.mkdir(parents=True, exist_ok=True)
    result: dict = {"threshold": threshold, "segment_threshold": segment_threshold, **(extra or {})}
    images: list[tuple[str, str]] = []
    table_rows = []
    for side, p in predictions.items():
        session = binary_metrics(p.session_labels, p.session_probabilities, threshold)
        segment = binary_metrics(p.segment_labels, p.segment_probabilities, segment_threshold)
        result[side] = {"session": session, "segment": segment, "predictions": {
            "session_ids": list(p.session_ids),
            "session_labels": [int(x) for x in p.session_labels],
            "session_probabilities": [float(x) for x in p.session_probabilities],
            "segment_session_ids": list(p.segment_session_ids),
            "segment_labels": [int(x) for x in p.segment_labels],
            "segment_probabilities": [float(x) for x in p.segment_probabilities],
        }}
        if p.session_prefix_probabilities is not None:
            result[side]["predictions"]["session_prefix_probabilities"] = [
                [float(x) for x in row] for row in p.session_prefix_probabilities]
            result[side]["predictions"]["session_prefix_uncalibrated"] = [
                [float(x) for x in row] for row in p.session_prefix_uncalibrated]
            result[side]["prefix"] = prefix_rows(p.session_labels, p.session_prefix_probabilities)
            result[side]["prefix_uncalibrated"] = prefix_rows(p.session_labels, p.session_prefix_uncalibrated)
        table_rows.append((side, result[side]))
        with open(folder / f"{side}_sessions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["session_id", "label", "probability", "predicted"])
            for sid, label, prob in zip(p.session_ids, p.session_labels, p.session_probabilities):
                writer.writerow([sid, int(label), f"{prob:.6f}", int(prob >= threshold)])
        with open(folder / f"{side}_segments.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["session_id", "label", "probability", "predicted"])
            for sid, label, prob in zip(p.segment_session_ids, p.segment_labels, p.segment_probabilities):
                writer.writerow([sid, int(label), f"{prob:.6f}", int(prob >= segment_threshold)])
        if side != "test" and "test" in predictions:
            continue  # plots for the reported set only
        plots.confusion_matrix_png(session, folder / f"{side}_confusion_session.png",
                                   f"{side}: sessions (threshold {threshold:.2f})")
        plots.confusion_matrix_png(segment, folder / f"{side}_confusion_segment.png",
                                   f"{side}: segments (threshold {segment_threshold:.2f})")
        plots.roc_png([("sessions", p.session_labels, p.session_probabilities),
                       ("segments", p.segment_labels, p.segment_probabilities)], folder / f"{side}_roc.png",
                      f"ROC, {side}")
        if "prefix" in result[side]:
            prefix_png(result[side]["prefix"], result[side]["prefix_uncalibrated"], folder / f"{side}_prefix.png",
                       f"{side}: session score after k segments")
            images.append((f"Score after k segments, {side}", f"{side}_prefix.png"))
        images += [(f"Confusion matrix, {side} sessions", f"{side}_confusion_session.png"),
                   (f"Confusion matrix, {side} segments", f"{side}_confusion_segment.png"),
                   (f"ROC, {side}", f"{side}_roc.png")]
        if tsne and p.segment_vectors is not None and len(p.segment_vectors) >= 5:
            plots.tsne_png(p.segment_vectors, p.segment_labels, folder / f"{side}_tsne.png",
                           f"t-SNE of {side} segment vectors", seed=seed)
            images.append((f"t-SNE of {side} segment vectors", f"{side}_tsne.png"))
    lines = [f"# {title}", "", f"> {SCREENING_NOTICE}", "",
             "Positive class = the depressed class (label 1). Session = one participant's recording. "
             "Thresholds were chosen on the validation set (never on the test set) and applied unchanged.", "",
             metrics_table(table_rows), ""]
    for side, metrics in table_rows:
        if "prefix" in metrics:
            lines += [f"## {side}: the session score at every point of a session", "", PREFIX_NOTE, "",
                      prefix_markdown(metrics["prefix"], metrics["prefix_uncalibrated"]), ""]
    if extra:
        lines += ["| run | value |", "|---|---|"] + [f"| {k} | {v:.1f} |" if isinstance(v, float) else f"| {k} | {v} |"
                                                   for k, v in extra.items()] + [""]
    for caption, image in images:
        lines += [f"### {caption}", "", f"![{caption}]({image})", ""]
    if data_summary:
        lines += [data_summary, ""]
    (folder / "report.md").write_text("\n".join(lines))
    return result


def cross_validation_markdown(title: str, summary: dict, data_summary: str = "") -> str:
    lines = [f"# {title}", "", f"> {SCREENING_NOTICE}", "",
             f"{len(summary['folds'])} participant-disjoint folds; each fold's threshold was chosen on its "
             "validation fold and applied to its test fold.", "",
             "| fold | session P | session R | session F1 | session AUC | segment F1 | segment AUC |",
             "|---|---|---|---|---|---|---|"]
    for name, fold in summary["folds"].items():
        s, g = fold["session"], fold["segment"]
        lines.append(f"| {name} | {_pct(s['precision'])} | {_pct(s['recall'])} | {_pct(s['f1'])} | {_pct(s['auc'])} | "
                     f"{_pct(g['f1'])} | {_pct(g['auc'])} |")
    lines += ["", "| metric | value |", "|---|---|",
              f"| session F1 (mean ± std over folds) | {_pct(summary['session_f1_mean'])} ± {_pct(summary['session_f1_std'])} |",
              f"| session AUC (mean ± std) | {_pct(summary['session_auc_mean'])} ± {_pct(summary['session_auc_std'])} |",
              f"| session AUC pooled over {summary['sessions']} sessions | {_pct(summary['pooled_session_auc'])} |",
              f"| segment AUC (mean ± std) | {_pct(summary['segment_auc_mean'])} ± {_pct(summary['segment_auc_std'])} |",
              f"| segment AUC pooled over {summary['segments']} segments | {_pct(summary['pooled_segment_auc'])} |",
              ""]
    if summary.get("pooled_prefix"):
        lines += ["## The session score at every point of a session (test folds pooled)", "", PREFIX_NOTE, "",
                  prefix_markdown(summary["pooled_prefix"], summary["pooled_prefix_uncalibrated"]), "",
                  "![score after k segments](prefix.png)", ""]
    if data_summary:
        lines += [data_summary, ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- moodstream evaluate
def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, output: str | Path, data_format: str = "auto",
                        split: str = "test", cache_dir: str = "~/.cache/moodstream/segments",
                        device: str = "auto", tsne: bool = True, progress: bool = True) -> dict:
    """Score a data set's `split` with a trained checkpoint, at the thresholds the checkpoint carries."""
    import torch

    from moodstream.model import ScreeningModel
    from moodstream.trainer.config import TrainConfig
    from moodstream.trainer.segments import build_segments
    from moodstream.trainer.train import load_dataset, pick_device, segment_params

    model = ScreeningModel.from_pretrained(checkpoint)
    device_ = pick_device(device)
    model.to(device_).eval()
    notes = model.config.notes or {}
    threshold = float(model.config.decision_threshold)
    segment_threshold = float(notes.get("segment_threshold", threshold))
    if notes.get("threshold_chosen_on") != "validation":
        print("warning: this checkpoint does not record a threshold chosen on validation data; "
              "its F1 may not mean much (AUC does not depend on it)")
    data_path = Path(data).expanduser()
    if data_format == "auto":
        data_format = detect_format(data_path)
    config = TrainConfig.from_dict({"data": {"format": data_format, "path": str(data_path.resolve()),
                                             "cache_dir": cache_dir,
                                             "segment_seconds": model.config.segment_seconds},
                                    "run": {"progress": progress}})
    dataset = load_dataset(config)
    store = build_segments(dataset, segment_params(config, model.config.sample_rate),
                           config.resolve(cache_dir), progress=progress)
    wanted = [s for s in store.sessions if split == "all" or s.session.split == split]
    if not wanted:
        splits = sorted({str(s.session.split) for s in store.sessions})
        raise ValueError(f"no sessions in split {split!r} of {data_path} (splits present: {', '.join(splits)}); "
                         "use --split")
    from moodstream.trainer.prefixes import prefix_logits, sigmoid

    session_probs, vectors_all, seg_probs, seg_labels, seg_owner = [], [], [], [], []
    prefixes, prefixes_uncalibrated = [], []
    with torch.inference_mode():
        for item in wanted:
            waves = [store.waveform(i) for i in item.segments]
            vectors = torch.cat([model.encode_segments(waves[s:s + 16], model.config.sample_rate)
                                 for s in range(0, len(waves), 16)])
            session_probs.append(model.score(vectors))
            logits = prefix_logits(model.session_head, [vectors])[0]
            prefixes.append(sigmoid(model.calibrated_logit(torch.from_numpy(logits)).numpy()))
            prefixes_uncalibrated.append(sigmoid(logits))
            seg_probs += torch.sigmoid(model.segment_head.segment_logits(vectors.to(device_))).cpu().tolist()
            seg_labels += [item.session.label] * len(vectors)
            seg_owner += [item.session.session_id] * len(vectors)
            vectors_all.append(vectors.numpy())
    predictions = Predictions(
        session_ids=[s.session.session_id for s in wanted],
        session_labels=np.asarray([s.session.label for s in wanted]),
        session_probabilities=np.asarray(session_probs),
        segment_session_ids=seg_owner, segment_labels=np.asarray(seg_labels),
        segment_probabilities=np.asarray(seg_probs), segment_vectors=np.concatenate(vectors_all),
        session_prefix_probabilities=prefixes, session_prefix_uncalibrated=prefixes_uncalibrated)
    result = write_evaluation(Path(output), {split: predictions}, threshold, segment_threshold,
                              title=f"moodstream evaluation: {Path(checkpoint).name} on {data_path.name} ({split})",
                              extra={"checkpoint": str(checkpoint), "model_version": model.model_version,
                                     "min_evidence_segments": model.config.min_evidence_segments,
                                     "data": f"{data_format} {data_path}"},
                              tsne=tsne, data_summary=dataset.summary_markdown())
    (Path(output) / "result.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def detect_format(path: Path) -> str:
    if path.is_file() and path.suffix.lower() == ".csv":
        return "manifest"
    if path.is_dir():
        if (path / "manifest.csv").is_file() and any(path.glob("Actor_*")):
            return "ravdess-standin"
        names = {p.name.lower() for p in path.rglob("*.csv")}
        if "train_split_depression_avec2017.csv" in names or "full_test_split.csv" in names:
            return "daic-woz"
        if "train_split.csv" in names or "dev_split.csv" in names:
            return "e-daic"
    raise ValueError(f"cannot tell the data format of {path}; pass --format (daic-woz, e-daic, manifest)")
