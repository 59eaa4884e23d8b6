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
from typing import Callable

import numpy as np

from moodstream import SCREENING_NOTICE
from moodstream.model.calibration import DEFAULT_INTERVAL_LEVEL
from moodstream.speech import CaptureSettings
from moodstream.trainer.metrics import binary_metrics, mean_std
from moodstream.trainer.calibration_report import (calibration_markdown, out_of_fold_markdown, out_of_fold_result,
                                                   pooled_markdown, pooled_summary, reliability_figure, scores_json)
from moodstream.trainer.prefixes import (PrefixScores, prefix_logit_parts, prefix_markdown, prefix_png,
                                          scored_prefixes, sigmoid)
from moodstream.trainer.prepare import detect_format, load_dataset

PREFIX_NOTE = ("What a live subscriber sees: the session score after 1, 2, 3 ... segments (sessions shorter than "
               "k are left out of row k) and at 25/50/75/100 % of each session. Log loss with probabilities kept "
               "within [1e-12, 1 - 1e-12]; ECE: expected calibration error, 10 equal-width bins; ECE if calibrated: "
               "what a perfectly calibrated score with these probabilities would show on this many sessions (the "
               "mean over 1000 draws of the outcomes from the scores); interval coverage: "
               "the share of scores whose interval holds the outcome rate of their bin (5 equal-count bins of the "
               "calibrated probability). The calibration never saw these sessions (docs/calibration.md).")


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
    # The calibrated score's interval bounds after each segment (None: the checkpoint carries no interval).
    session_prefix_low: list[np.ndarray] | None = None
    session_prefix_high: list[np.ndarray] | None = None
    interval_level: float = DEFAULT_INTERVAL_LEVEL


def _pct(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def metrics_table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| set | level | n (positive) | threshold | precision | recall (sensitivity) | specificity | F1 | AUC | "
             "TP | FP | TN | FN |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, metrics in rows:
        for level in ("session", "segment"):
            m = metrics[level]
            lines.append(f"| {name} | {level} | {m['n']} ({m['positives']}) | {m['threshold']:.3f} | "
                         f"{_pct(m['precision'])} | {_pct(m['recall'])} | {_pct(m.get('specificity'))} | "
                         f"{_pct(m['f1'])} | {_pct(m['auc'])} | {m['tp']} | {m['fp']} | {m['tn']} | {m['fn']} |")
    return "\n".join(lines)


def write_evaluation(folder: Path, predictions: dict[str, Predictions], threshold: float, segment_threshold: float,
                     title: str, extra: dict | None = None, tsne: bool = True, seed: int = 0,
                     data_summary: str | None = None, positive_class: str = "depressed",
                     appendix: str | None = None, out_of_fold: PrefixScores | None = None,
                     calibration: dict | None = None, threshold_chosen_on: str = "validation") -> dict:
    """Metrics, prediction CSVs, PNG plots and report.md for each set in `predictions`.

    `out_of_fold`: the scores the calibration and threshold were fitted on (cross-fitting), reported beside
    the sets; `calibration`: what the checkpoint's calibration is (its notes.calibration)."""
    from moodstream.trainer import plots

    folder.mkdir(parents=True, exist_ok=True)
    result: dict = {"threshold": threshold, "segment_threshold": segment_threshold,
                    "threshold_chosen_on": threshold_chosen_on, **(extra or {})}
    if calibration is not None:
        result["calibration"] = calibration
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
            scores = PrefixScores(np.asarray(p.session_labels), p.session_prefix_probabilities,
                                  p.session_prefix_uncalibrated, p.session_prefix_low, p.session_prefix_high,
                                  p.interval_level)
            result[side]["predictions"].update(scores_json(scores))
            result[side]["prefix"] = scores.rows()
            result[side]["prefix_uncalibrated"] = scores.uncalibrated_rows()
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
            reliability_figure(scores, folder / f"{side}_reliability.png",
                               f"{side}: reliability after k segments (5 equal-count bins)")
            images += [(f"Score after k segments, {side}", f"{side}_prefix.png"),
                       (f"Reliability after k segments, {side}", f"{side}_reliability.png")]
        images += [(f"Confusion matrix, {side} sessions", f"{side}_confusion_session.png"),
                   (f"Confusion matrix, {side} segments", f"{side}_confusion_segment.png"),
                   (f"ROC, {side}", f"{side}_roc.png")]
        if tsne and p.segment_vectors is not None and len(p.segment_vectors) >= 5:
            plots.tsne_png(p.segment_vectors, p.segment_labels, folder / f"{side}_tsne.png",
                           f"t-SNE of {side} segment vectors", seed=seed)
            images.append((f"t-SNE of {side} segment vectors", f"{side}_tsne.png"))
    if out_of_fold is not None:
        result["out_of_fold"] = out_of_fold_result(out_of_fold, threshold)
        reliability_figure(out_of_fold, folder / "out_of_fold_reliability.png",
                           "out of fold: reliability after k segments (5 equal-count bins)")
    chosen_on = "the validation set" if threshold_chosen_on == "validation" else f"the {threshold_chosen_on}"
    lines = [f"# {title}", "", f"> {SCREENING_NOTICE}", "",
             f"Positive class (label 1) = {positive_class}. Session = one participant's recording. The session "
             f"threshold was chosen on {chosen_on}, the segment threshold on the validation set (never on the "
             "test set), and both were applied unchanged.", "",
             metrics_table(table_rows), ""]
    if calibration is not None:
        lines += [calibration_markdown(calibration), ""]
    for side, metrics in table_rows:
        if "prefix" in metrics:
            lines += [f"## {side}: the session score at every point of a session", "", PREFIX_NOTE, "",
                      prefix_markdown(metrics["prefix"], metrics["prefix_uncalibrated"]), ""]
    if out_of_fold is not None:
        lines += [out_of_fold_markdown(result["out_of_fold"], "out_of_fold_reliability.png")]
    if extra:
        lines += ["| run | value |", "|---|---|"] + [f"| {k} | {v:.1f} |" if isinstance(v, float) else f"| {k} | {v} |"
                                                   for k, v in extra.items()] + [""]
    for caption, image in images:
        lines += [f"### {caption}", "", f"![{caption}]({image})", ""]
    if appendix:
        lines += [appendix, ""]
    if data_summary:
        lines += [data_summary, ""]
    (folder / "report.md").write_text("\n".join(lines))
    return result


def cross_validation_markdown(title: str, summary: dict, data_summary: str = "") -> str:
    lines = [f"# {title}", "", f"> {SCREENING_NOTICE}", "",
             f"{len(summary['folds'])} participant-disjoint folds; each fold's threshold was chosen on its own "
             "training speakers' out-of-fold scores (cross-fitting) or on its validation fold, never on its "
             "test fold, and applied to its test fold unchanged.", "",
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
                  "![score after k segments](prefix.png)", "", "![reliability](reliability.png)", ""]
    lines += [pooled_markdown(summary)]
    if data_summary:
        lines += [data_summary, ""]
    return "\n".join(lines)


def summarize_folds(results: dict[str, dict]) -> dict:
    """Per-fold test metrics, mean ± std over folds, and AUCs pooled over every fold's test predictions."""
    from sklearn.metrics import roc_auc_score

    folds = {name: r for name, r in results.items() if "test" in r}
    session_labels, session_probs, segment_labels, segment_probs = [], [], [], []
    for r in folds.values():
        session_labels += r["test"]["predictions"]["session_labels"]
        session_probs += r["test"]["predictions"]["session_probabilities"]
        segment_labels += r["test"]["predictions"]["segment_labels"]
        segment_probs += r["test"]["predictions"]["segment_probabilities"]

    def collect(level: str, key: str):
        return [r["test"][level][key] for r in folds.values()]

    summary = {"folds": {name: {"session": r["test"]["session"], "segment": r["test"]["segment"]}
                         for name, r in folds.items()}}
    for level in ("session", "segment"):
        for key in ("precision", "recall", "f1", "auc"):
            mean, std = mean_std(collect(level, key))
            summary[f"{level}_{key}_mean"], summary[f"{level}_{key}_std"] = mean, std
    both = lambda labels: len(set(labels)) == 2  # noqa: E731
    summary["pooled_session_auc"] = float(roc_auc_score(session_labels, session_probs)) if both(session_labels) else math.nan
    summary["pooled_segment_auc"] = float(roc_auc_score(segment_labels, segment_probs)) if both(segment_labels) else math.nan
    summary["sessions"] = len(session_labels)
    summary["segments"] = len(segment_labels)
    summary.update(pooled_summary(folds))
    return summary


# --------------------------------------------------------------------------- moodstream evaluate
# fp32 on both sides: the batch path and the live path compute the same numbers up to summation order.
REPLAY_TOLERANCE = 1e-4

# (model, checkpoint, sessions, batch probabilities by session id after every segment, progress) -> one row a session
Replayer = Callable[..., list[dict]]


def checkpoint_speech(model) -> tuple[CaptureSettings, str | None]:
    """The speech settings a checkpoint was trained with, or the agent's defaults and a note saying so."""
    if model.config.speech is not None:
        return CaptureSettings.from_dict(model.config.speech), None
    settings = CaptureSettings(chunk_seconds=model.config.segment_seconds)
    return settings, ("this checkpoint records no speech settings (it predates them): the agent's defaults are "
                      "used, as a live agent does with it")


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, output: str | Path, data_format: str = "auto",
                        split: str = "test", cache_dir: str = "~/.cache/moodstream/segments",
                        device: str = "auto", tsne: bool = True, progress: bool = True,
                        replay: Replayer | None = None) -> dict:
    """Score a data set's `split` with a trained checkpoint, at the thresholds the checkpoint carries.

    Sessions are cut by the agent's speech path with the checkpoint's speech settings. With
    `replay`, every session is also streamed by the real agent into a real server (Redis child
    process, gRPC on 127.0.0.1, fp32) and the live scores are compared with the batch ones: `replay` is
    what does the streaming (moodstream.compose.replay.replay_sessions, which wires agent and server)."""
    import torch

    from moodstream.model import ScreeningModel, pick_device
    from moodstream.trainer.config import TrainConfig
    from moodstream.trainer.segments import SegmentParams, build_segments

    model = ScreeningModel.from_pretrained(checkpoint)
    device_ = pick_device(device)
    model.to(device_).eval()
    notes = model.config.notes or {}
    threshold = float(model.config.decision_threshold)
    segment_threshold = float(notes.get("segment_threshold", threshold))
    if notes.get("threshold_chosen_on") not in ("validation", "out-of-fold training sessions"):
        print("warning: this checkpoint does not record a threshold chosen on held-out data (validation or "
              "out-of-fold); its F1 may not mean much (AUC does not depend on it)")
    speech, speech_note = checkpoint_speech(model)
    if speech_note:
        print(f"note: {speech_note}")
    data_path = Path(data).expanduser()
    if data_format == "auto":
        data_format = detect_format(data_path)
    config = TrainConfig.from_dict({"data": {"format": data_format, "path": str(data_path.resolve()),
                                             "cache_dir": cache_dir},
                                    "speech": speech.as_dict(), "run": {"progress": progress}})
    dataset = load_dataset(config)
    store = build_segments(dataset, SegmentParams(speech), config.resolve(cache_dir), progress=progress)
    split_note = None
    if not any(s.session.split for s in store.sessions) and split != "all":
        split_note = f"{data_path.name} defines no splits: every session is scored ({len(store.sessions)})"
        print(f"note: {split_note}")
        split = "all"
    wanted = [s for s in store.sessions if split == "all" or s.session.split == split]
    if not wanted:
        splits = sorted({str(s.session.split) for s in store.sessions})
        raise ValueError(f"no sessions in split {split!r} of {data_path} (splits present: {', '.join(splits)}); "
                         "use --split")
    session_probs, vectors_all, seg_probs, seg_labels, seg_owner = [], [], [], [], []
    prefix_probs: dict[str, list[float]] = {}
    prefixes, prefixes_uncalibrated, lows, highs = [], [], [], []
    with torch.inference_mode():
        for item in wanted:
            # One segment at a time, as the server encodes them: no padding inside a batch.
            vectors = torch.cat([model.encode_segments([store.pcm(i)], model.config.sample_rate)
                                 for i in item.segments])
            session_probs.append(model.score(vectors))
            if replay:
                prefix_probs[item.session.session_id] = [model.score(vectors[:k])
                                                         for k in range(1, len(vectors) + 1)]
            parts = prefix_logit_parts(model.session_head, [vectors])
            probabilities, low, high = scored_prefixes(model.calibration, parts)
            prefixes.append(probabilities[0])
            prefixes_uncalibrated.append(sigmoid(parts[0].sum(axis=1)))
            if low is not None:
                lows.append(low[0])
                highs.append(high[0])
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
        session_prefix_probabilities=prefixes, session_prefix_uncalibrated=prefixes_uncalibrated,
        session_prefix_low=lows or None, session_prefix_high=highs or None, interval_level=model.calibration.level)
    extra = {"checkpoint": str(checkpoint), "model_version": model.model_version,
             "min_evidence_segments": model.config.min_evidence_segments,
             "data": f"{data_format} {data_path}", "speech": speech_summary(speech)}
    if split_note:
        extra["split"] = split_note
    replay_rows = None
    if replay:
        replay_rows = replay(model, checkpoint, wanted, prefix_probs, progress=progress)
        worst = max(row["max_difference"] for row in replay_rows)
        extra["replay: largest |live - batch| probability"] = f"{worst:.2e} (tolerance {REPLAY_TOLERANCE:g})"
    result = write_evaluation(Path(output), {split: predictions}, threshold, segment_threshold,
                              title=f"moodstream evaluation: {Path(checkpoint).name} on {data_path.name} ({split})",
                              extra=extra, tsne=tsne, data_summary=dataset.summary_markdown(),
                              positive_class=dataset.positive_class,
                              appendix=replay_markdown(replay_rows) if replay_rows is not None else None,
                              calibration=notes.get("calibration"),
                              threshold_chosen_on=notes.get("threshold_chosen_on", "validation"))
    result["split"] = split
    result["speech"] = speech.as_dict()
    if replay_rows is not None:
        result["replay"] = {"sessions": replay_rows, "tolerance": REPLAY_TOLERANCE,
                            "max_difference": max(row["max_difference"] for row in replay_rows),
                            "passed": all(row["passed"] for row in replay_rows)}
    (Path(output) / "result.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def speech_summary(speech) -> str:
    return (f"webrtcvad aggressiveness {speech.vad_aggressiveness}, {speech.frame_ms} ms frames, onset "
            f"{speech.onset_ms} ms, hangover {speech.hangover_ms} ms, warm-up {speech.warmup_ms} ms; "
            f"{speech.chunk_seconds:g} s chunks, last chunk kept from {speech.min_last_chunk_seconds:g} s")


def replay_markdown(rows: list[dict]) -> str:
    passed = all(row["passed"] for row in rows)
    lines = ["## Replay: the same audio through the live agent and server", "",
             f"Each session's audio was streamed by the agent (the same speech path, settings from the server's "
             f"GetModelInfo) into a server (Redis, gRPC on 127.0.0.1, fp32 encoder, incremental scorer). The "
             f"largest difference is over the score after every segment. Tolerance {REPLAY_TOLERANCE:g}: "
             f"{'passed' if passed else 'FAILED'}.", "",
             "| session | segments (batch / live) | probability batch | probability live | largest difference |",
             "|---|---|---|---|---|"]
    for row in rows:
        live = "n/a" if row["probability_live"] is None else f"{row['probability_live']:.6f}"
        lines.append(f"| {row['session_id']} | {row['segments_batch']} / {row['segments_live']} | "
                     f"{row['probability_batch']:.6f} | {live} | {row['max_difference']:.2e} |")
    return "\n".join(lines) + "\n"
