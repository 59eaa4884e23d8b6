"""The calibration's part of every report: what was fitted and chosen, the out-of-fold (OOF) scores it was
fitted on, reliability diagrams, and test folds pooled (docs/calibration.md).

Used by trainer/evaluate.py for one checkpoint's report and for the cross-validation summary.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from moodstream.model.calibration import DEFAULT_INTERVAL_LEVEL
from moodstream.trainer.metrics import binary_metrics, pooled_metrics
from moodstream.trainer.prefixes import (PrefixScores, interval_coverage, prefix_markdown, reliability_panels,
                                          sampled_coverage)

OOF_NOTE = ("Out of fold: every training session scored after every prefix by a model retrained without its "
            "speaker (inner folds of the training speakers). The calibration below was fitted on these scores, "
            "so this table is in sample for the calibration (not for the networks); the held-out log loss of "
            "each candidate is the honest measure.")


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _lists(values) -> list[list[float]] | None:
    return None if values is None else [[float(x) for x in row] for row in values]


def scores_json(scores: PrefixScores) -> dict:
    return {"session_labels": [int(x) for x in scores.labels],
            "session_prefix_probabilities": _lists(scores.probabilities),
            "session_prefix_uncalibrated": _lists(scores.uncalibrated),
            "session_prefix_low": _lists(scores.low), "session_prefix_high": _lists(scores.high),
            "interval_level": scores.level}


def scores_from_json(values: dict) -> PrefixScores:
    arrays = lambda key: None if values.get(key) is None else [np.asarray(r, float) for r in values[key]]  # noqa: E731
    return PrefixScores(np.asarray(values["session_labels"], dtype=int), arrays("session_prefix_probabilities"),
                        arrays("session_prefix_uncalibrated"), arrays("session_prefix_low"),
                        arrays("session_prefix_high"), values.get("interval_level", DEFAULT_INTERVAL_LEVEL))


def pooled(scores: list[PrefixScores]) -> PrefixScores:
    """Every fold's scores side by side (each fold calibrated by its own fit)."""
    with_interval = all(s.low is not None for s in scores)
    join = lambda key: [row for s in scores for row in getattr(s, key)]  # noqa: E731
    return PrefixScores(np.concatenate([s.labels for s in scores]), join("probabilities"), join("uncalibrated"),
                        join("low") if with_interval else None, join("high") if with_interval else None,
                        scores[0].level)


def out_of_fold_result(scores: PrefixScores, threshold: float) -> dict:
    return {"prefix": scores.rows(), "prefix_uncalibrated": scores.uncalibrated_rows(),
            "session": binary_metrics(scores.labels, scores.whole_sessions(), threshold),
            "predictions": scores_json(scores)}


def reliability_figure(scores: PrefixScores, path: Path, title: str) -> None:
    from moodstream.trainer.plots import reliability_png

    reliability_png(reliability_panels(scores.labels, scores.probabilities), path, title)


def calibration_markdown(calibration: dict | None) -> str:
    """What the checkpoint's calibration is and how it was chosen."""
    if not calibration:
        return ""
    method = calibration.get("method")
    if method != "cross-fit":
        detail = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in calibration.items()
                           if k != "method")
        return f"Calibration: {method}" + (f" ({detail})" if detail else "") + "."
    oof = calibration["out_of_fold"]
    r, s, b = calibration["coefficients"]
    lines = [f"Calibration: cross-fitted on {oof['sessions']} out-of-fold training sessions ({oof['speakers']} "
             f"speakers, {oof['prefixes']} prefixes, {calibration['inner_folds']} inner folds); chosen "
             f"**{calibration['chosen']}**: probability = sigmoid({r:.4g} · recurrent + {s:.4g} · segment evidence "
             f"{b:+.4g}); interval from {calibration['replicates']} speaker resamples "
             f"({calibration.get('interval_from') or calibration['chosen']} refitted) at level "
             f"{calibration['interval_level']:g}. Decision threshold {calibration['threshold']:.3f} "
             f"({calibration['threshold_rule']}); evidence rule {calibration['min_evidence_segments']} segment(s)."]
    if calibration.get("inner_folds_note"):
        lines.append(f"Note: {calibration['inner_folds_note']}.")
    if calibration.get("note"):
        lines.append(f"Note: {calibration['note']}.")
    if calibration.get("out_of_fold_scores"):
        lines += ["", "The out-of-fold scores, calibrated (in sample for the calibration):", "",
                  prefix_markdown(calibration["out_of_fold_scores"])]
    held_out, in_sample = calibration.get("held_out_log_loss", {}), calibration.get("in_sample_log_loss", {})
    lines += ["", "| candidate | OOF log loss, speaker-grouped held out | OOF log loss, in sample | "
                  "(recurrent scale, segment scale, bias) |", "|---|---|---|---|"]
    for name, coefficients in calibration.get("coefficients_by_candidate", {}).items():
        held = held_out.get(name)
        lines.append(f"| {name}{' (chosen)' if name == calibration['chosen'] else ''} | "
                     f"{'n/a' if held is None else f'{held:.4f}'} | {in_sample.get(name, math.nan):.4f} | "
                     f"({', '.join(f'{x:.4g}' for x in coefficients)}) |")
    return "\n".join(lines)


def out_of_fold_markdown(result: dict, image: str | None) -> str:
    session = result["session"]
    lines = ["## Out of fold: the scores the calibration and threshold were fitted on", "", OOF_NOTE, "",
             prefix_markdown(result["prefix"], result["prefix_uncalibrated"]), "",
             f"Whole sessions at the carried threshold: F1 {_pct(session['f1'])}, sensitivity "
             f"{_pct(session['sensitivity'])}, specificity {_pct(session['specificity'])} %.", ""]
    if image:
        lines += [f"![reliability, out of fold]({image})", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- cross-validation
def pooled_summary(folds: dict[str, dict]) -> dict:
    """Test folds pooled (prefix rows with coverage, session metrics at each fold's threshold), the OOF sets
    pooled, and which calibration each fold chose."""
    summary: dict = {}
    tests = [r["test"]["predictions"] for r in folds.values()]
    if all(t.get("session_prefix_probabilities") is not None for t in tests):
        test = pooled([scores_from_json(t) for t in tests])
        summary["pooled_prefix"] = test.rows()
        summary["pooled_prefix_uncalibrated"] = test.uncalibrated_rows()
        summary["pooled_test_scores"] = scores_json(test)
        if test.low is not None:
            summary["pooled_coverage_every_prefix"] = every_prefix_coverage(test)
    summary["pooled_session_at_threshold"] = pooled_metrics([r["test"]["session"] for r in folds.values()])
    if all("out_of_fold" in r for r in folds.values()):
        oof = pooled([scores_from_json(r["out_of_fold"]["predictions"]) for r in folds.values()])
        summary["pooled_out_of_fold_prefix"] = oof.rows()
        summary["pooled_out_of_fold_prefix_uncalibrated"] = oof.uncalibrated_rows()
        summary["pooled_out_of_fold_scores"] = scores_json(oof)
    calibrations = [r.get("calibration") or {} for r in folds.values()]
    if calibrations and all(c.get("method") == "cross-fit" for c in calibrations):
        names = calibrations[0].get("held_out_log_loss", {}).keys()
        summary["calibration_chosen"] = {name: c["chosen"] for name, c in zip(folds, calibrations)}
        summary["held_out_log_loss_mean"] = {
            name: float(np.mean([c["held_out_log_loss"][name] for c in calibrations if name in c.get("held_out_log_loss", {})]))
            for name in names}
    return summary


def every_prefix_coverage(scores: PrefixScores) -> dict:
    """Interval coverage over every (session, prefix) score at once, binned together: both ways and the width."""
    flat = lambda values: np.concatenate([np.asarray(v, dtype=float) for v in values])  # noqa: E731
    labels = np.concatenate([np.full(len(p), label) for p, label in zip(scores.probabilities, scores.labels)])
    probabilities, low, high = flat(scores.probabilities), flat(scores.low), flat(scores.high)
    return {"coverage": interval_coverage(labels, probabilities, low, high),
            "sampled_coverage": sampled_coverage(labels, probabilities, low, high, scores.level),
            "interval_width": float(np.mean(high - low)), "scores": int(labels.size)}


def calibration_metrics(summary: dict) -> dict:
    """The headline numbers of a cross-validation summary, test folds pooled: whole-session ECE, Brier and log
    loss, ECE after every prefix row, F1 / sensitivity / specificity at the carried thresholds, coverage."""
    rows = {r["prefix"]: r for r in summary.get("pooled_prefix", [])}
    if "100 %" not in rows:
        return {}
    whole = rows["100 %"]
    at = summary.get("pooled_session_at_threshold", {})
    every = summary.get("pooled_coverage_every_prefix") or {}
    by_count = {name: r for name, r in rows.items() if name.endswith(("segment", "segments"))}
    return {"whole_ece": whole["ece"], "whole_calibrated_ece": whole.get("calibrated_ece"),
            "whole_brier": whole["brier"], "whole_log_loss": whole.get("log_loss"),
            "whole_auc": whole["auc"], "segment_auc": summary.get("pooled_segment_auc"),
            "ece_after": {name: r["ece"] for name, r in by_count.items()},
            "calibrated_ece_after": {name: r.get("calibrated_ece") for name, r in by_count.items()},
            "max_prefix_ece": max(r["ece"] for r in rows.values()),
            "f1": at.get("f1"), "sensitivity": at.get("sensitivity"), "specificity": at.get("specificity"),
            "coverage_whole": whole.get("coverage"), "sampled_coverage_whole": whole.get("sampled_coverage"),
            "interval_width_whole": whole.get("interval_width"),
            "coverage_every_prefix": every.get("coverage"), "sampled_coverage_every_prefix": every.get("sampled_coverage"),
            "interval_width_every_prefix": every.get("interval_width")}


def pooled_markdown(summary: dict) -> str:
    lines = []
    every = summary.get("pooled_coverage_every_prefix")
    if every is not None:
        lines += [f"Interval coverage over every prefix of every test session at once ({every['scores']} scores, "
                  f"5 equal-count bins): {_pct(every['coverage'])} %, allowing for the bins' size "
                  f"{_pct(every['sampled_coverage'])} %; mean interval width {every['interval_width']:.3f}.", ""]
    at = summary.get("pooled_session_at_threshold")
    if at:
        lines += [f"Test folds pooled, whole sessions at each fold's carried threshold: F1 {_pct(at['f1'])}, "
                  f"sensitivity {_pct(at['sensitivity'])}, specificity {_pct(at['specificity'])} % "
                  f"(TP {at['tp']}, FP {at['fp']}, TN {at['tn']}, FN {at['fn']}).", ""]
    if summary.get("calibration_chosen"):
        chosen = ", ".join(f"{fold}: {name}" for fold, name in summary["calibration_chosen"].items())
        losses = ", ".join(f"{name} {loss:.4f}" for name, loss in summary["held_out_log_loss_mean"].items())
        lines += [f"Calibration chosen per fold: {chosen}. Held-out OOF log loss per candidate, mean over folds: "
                  f"{losses}.", ""]
    if summary.get("pooled_out_of_fold_prefix"):
        lines += ["## Out of fold (training speakers of every fold pooled)", "", OOF_NOTE, "",
                  prefix_markdown(summary["pooled_out_of_fold_prefix"],
                                  summary["pooled_out_of_fold_prefix_uncalibrated"]), "",
                  "![reliability, out of fold](out_of_fold_reliability.png)", ""]
    return "\n".join(lines)


def write_pooled_figures(summary: dict, folder: Path) -> None:
    if "pooled_test_scores" in summary:
        reliability_figure(scores_from_json(summary["pooled_test_scores"]), folder / "reliability.png",
                           "test folds pooled: reliability after k segments (5 equal-count bins)")
    if "pooled_out_of_fold_scores" in summary:
        reliability_figure(scores_from_json(summary["pooled_out_of_fold_scores"]),
                           folder / "out_of_fold_reliability.png", "out of fold, pooled: reliability after k segments")
