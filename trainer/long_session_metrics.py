"""The long-session check's numbers: per segment count k, how well the session score ranks and how
calibrated it is, how each class's mean score moves with k, and whether the interval holds what it says.

Every function takes, per session, the calibrated probability after each of its segments
(`trainer.prefixes.prefix_probabilities`); row k reads the k-th of them from every session that has at
least k segments, so a row's numbers are the score a live subscriber saw after exactly k segments.

torch-free at import (trainer.prefixes, which imports torch, is imported where it is used): the command's
parser reads the goal from here.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_LEVEL = 0.9
GOAL_ECE = 0.10  # at most, at every goal point
GOAL_AUC_GAP = 0.03  # at most, between a goal point's AUC and the reference point's


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else math.nan


def row_at(k: int, labels, prefix_probabilities: list[np.ndarray], intervals: list[np.ndarray] | None,
           level: float = 0.9) -> dict:
    """The metrics of the score after exactly k segments, over the sessions that have k segments.

    `intervals`: per session, [n, 2] (low, high) after each segment, or None when the checkpoint has none.
    Coverage is the training reports' (trainer.prefixes): the share of predictions whose interval holds the
    outcome rate of their bin (5 equal-count bins by score), and the lenient one that allows for the bin's
    sampling noise.
    """
    from moodstream.trainer.prefixes import (ECE_BINS, expected_calibration_error, interval_coverage,
                                              sampled_coverage)

    labels = np.asarray(labels, dtype=int)
    chosen = np.asarray([len(p) >= k for p in prefix_probabilities], dtype=bool)
    scores = np.asarray([p[k - 1] for p, c in zip(prefix_probabilities, chosen) if c], dtype=float)
    kept = labels[chosen]
    row = {"segments": k, "sessions": int(kept.size), "positives": int(kept.sum()),
           "auc": auc(kept, scores) if kept.size else math.nan,
           "ece": expected_calibration_error(kept, scores, ECE_BINS),
           "brier": float(np.mean((scores - kept) ** 2)) if kept.size else math.nan,
           "mean_score": float(scores.mean()) if kept.size else math.nan,
           "mean_score_positive": float(scores[kept == 1].mean()) if (kept == 1).any() else math.nan,
           "mean_score_negative": float(scores[kept == 0].mean()) if (kept == 0).any() else math.nan,
           "interval_coverage": None, "interval_coverage_sampled": None, "mean_interval_width": None}
    if intervals is not None and kept.size:
        bounds = np.asarray([b[k - 1] for b, c in zip(intervals, chosen) if c], dtype=float)
        row["interval_coverage"] = interval_coverage(kept, scores, bounds[:, 0], bounds[:, 1])
        row["interval_coverage_sampled"] = sampled_coverage(kept, scores, bounds[:, 0], bounds[:, 1], level)
        row["mean_interval_width"] = float(np.mean(bounds[:, 1] - bounds[:, 0]))
    return row


def reliability(labels, scores, bins: int = 10) -> list[dict]:
    """Per occupied equal-width bin (the ECE's bins): its sessions, their mean score and observed outcome rate."""
    labels, scores = np.asarray(labels, dtype=float), np.asarray(scores, dtype=float)
    which = np.minimum((scores * bins).astype(int), bins - 1)
    return [{"bin": [b / bins, (b + 1) / bins], "sessions": int((which == b).sum()),
             "mean_score": float(scores[which == b].mean()), "outcome_rate": float(labels[which == b].mean())}
            for b in range(bins) if (which == b).any()]


def speaker_bootstrap(k: int, labels, speakers: list[str], prefix_probabilities: list[np.ndarray],
                      resamples: int = BOOTSTRAP_RESAMPLES, level: float = BOOTSTRAP_LEVEL, seed: int = 0) -> dict:
    """Percentile intervals of AUC and ECE at k, resampling whole speakers (their sessions stay together)."""
    from moodstream.trainer.prefixes import ECE_BINS, expected_calibration_error

    labels = np.asarray(labels, dtype=int)
    names = sorted(set(speakers))
    members = {name: [i for i, s in enumerate(speakers) if s == name and len(prefix_probabilities[i]) >= k]
               for name in names}
    rng = np.random.default_rng(seed)
    aucs, eces = [], []
    for _ in range(resamples):
        picked = [i for j in rng.integers(0, len(names), len(names)) for i in members[names[j]]]
        if len(set(labels[picked].tolist())) < 2:
            continue
        scores = np.asarray([prefix_probabilities[i][k - 1] for i in picked])
        aucs.append(auc(labels[picked], scores))
        eces.append(expected_calibration_error(labels[picked], scores, ECE_BINS))
    tail = 100 * (1 - level) / 2

    def band(values: list[float]) -> list[float] | None:
        return [float(v) for v in np.percentile(values, [tail, 100 - tail])] if values else None

    return {"auc": band(aucs), "ece": band(eces), "level": level, "resamples": len(aucs)}


def goal_verdict(rows: dict[int, dict], goal_at: list[int], reference: int) -> dict:
    """ECE <= GOAL_ECE and |AUC - AUC at `reference`| <= GOAL_AUC_GAP at every point of `goal_at`."""
    points = {}
    for k in goal_at:
        row = rows[k]
        gap = abs(row["auc"] - rows[reference]["auc"])
        points[str(k)] = {"ece_ok": bool(row["ece"] <= GOAL_ECE), "auc_gap": float(gap),
                     "auc_ok": bool(gap <= GOAL_AUC_GAP)}
    return {"ece_at_most": GOAL_ECE, "auc_within": GOAL_AUC_GAP, "reference_segments": reference,
            "points": points, "met": all(p["ece_ok"] and p["auc_ok"] for p in points.values())}


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _band(band) -> str:
    return "" if not band else f" [{_pct(band[0])}, {_pct(band[1])}]"


def summary_table(rows: dict[int, dict], report_at: list[int], bootstrap: dict[int, dict]) -> str:
    lines = ["| after k segments | sessions (positive) | AUC % [90 % CI] | ECE % [90 % CI] | Brier | mean score, "
             "label 1 | mean score, label 0 | mean score, all | interval coverage % (bin rate / sampled) | "
             "mean interval width |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for k in report_at:
        r, b = rows[k], bootstrap.get(k, {})
        width = "n/a" if r["mean_interval_width"] is None else f"{r['mean_interval_width']:.3f}"
        coverage = "n/a" if r["interval_coverage"] is None else \
            f"{_pct(r['interval_coverage'])} / {_pct(r['interval_coverage_sampled'])}"
        lines.append(f"| {k} | {r['sessions']} ({r['positives']}) | {_pct(r['auc'])}{_band(b.get('auc'))} | "
                     f"{_pct(r['ece'])}{_band(b.get('ece'))} | {r['brier']:.3f} | {r['mean_score_positive']:.3f} | "
                     f"{r['mean_score_negative']:.3f} | {r['mean_score']:.3f} | {coverage} | {width} |")
    return "\n".join(lines)


def every_k_table(rows: dict[int, dict]) -> str:
    lines = ["| k | AUC % | ECE % | Brier | mean score, label 1 | mean score, label 0 |", "|---|---|---|---|---|---|"]
    for k, r in sorted(rows.items()):
        lines.append(f"| {k} | {_pct(r['auc'])} | {_pct(r['ece'])} | {r['brier']:.3f} | "
                     f"{r['mean_score_positive']:.3f} | {r['mean_score_negative']:.3f} |")
    return "\n".join(lines)


def reliability_markdown(rows: dict[int, dict], report_at: list[int]) -> str:
    """Per score bin and reported count: sessions, mean score -> observed outcome rate."""
    lines = ["| score bin | " + " | ".join(f"after {k} segments" for k in report_at) + " |",
             "|---|" + "---|" * len(report_at)]
    for b in range(10):
        cells = []
        for k in report_at:
            found = [c for c in rows[k].get("reliability", []) if round(c["bin"][0] * 10) == b]
            cells.append(f"{found[0]['sessions']}: {found[0]['mean_score']:.2f} → {found[0]['outcome_rate']:.2f}"
                         if found else "")
        if any(cells):
            lines.append(f"| {b / 10:.1f}-{(b + 1) / 10:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_markdown(goal: dict) -> str:
    lines = [f"Goal: ECE at most {_pct(goal['ece_at_most'])} % and AUC within {100 * goal['auc_within']:.0f} points "
             f"of the AUC after {goal['reference_segments']} segments, at "
             f"{', '.join(str(k) for k in goal['points'])} segments: **{'met' if goal['met'] else 'not met'}**.", "",
             "| after k segments | ECE within goal | AUC gap to the reference (points) | AUC within goal |",
             "|---|---|---|---|"]
    for k, point in goal["points"].items():
        lines.append(f"| {k} | {'yes' if point['ece_ok'] else 'no'} | {100 * point['auc_gap']:.1f} | "
                     f"{'yes' if point['auc_ok'] else 'no'} |")
    return "\n".join(lines)


def long_session_png(rows: dict[int, dict], path: Path, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    from moodstream.trainer.plots import _pyplot, save_figure

    plt = _pyplot()
    ks = sorted(rows)
    figure, (scores, quality) = plt.subplots(1, 2, figsize=(9, 3.3), dpi=110)
    scores.plot(ks, [rows[k]["mean_score_positive"] for k in ks], marker="o", label="label 1 sessions")
    scores.plot(ks, [rows[k]["mean_score_negative"] for k in ks], marker="o", label="label 0 sessions")
    scores.plot(ks, [rows[k]["mean_score"] for k in ks], linestyle="--", color="grey", label="all sessions")
    scores.set_ylim(0, 1)
    scores.set_title("mean calibrated score", fontsize=9)
    quality.plot(ks, [rows[k]["auc"] for k in ks], marker="o", label="AUC")
    quality.plot(ks, [rows[k]["ece"] for k in ks], marker="x", label="ECE (10 bins)")
    quality.axhline(GOAL_ECE, color="grey", linewidth=0.8, linestyle=":")
    quality.set_ylim(0, 1)
    quality.set_title("ranking and calibration", fontsize=9)
    for axis in (scores, quality):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("segments scored")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    save_figure(figure, path, title)
