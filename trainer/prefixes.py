"""Scores at every point of a session: prefix metrics, calibration and the evidence rule.

A live subscriber sees the session score after 1, 2, 3 ... segments, so every
checkpoint is evaluated on prefixes: after k segments (sessions shorter than k
are left out of row k) and at 25/50/75/100 % of each session (ceil of the
fraction, at least one segment). Each row gives the session AUC, the log loss,
the Brier score, the expected calibration error (10 equal-width bins) and,
where the scores carry intervals, the intervals' coverage.

The calibration the recipes use by default is fitted on out-of-fold scores of
the training speakers (trainer/crossfit.py, docs/calibration.md). The
validation Platt fit here (`scoring.calibration = "platt"`) is Platt scaling of
the session head's logit on every prefix of the validation sessions (never on
test). The evidence rule is the fewest segments after which the AUC (each
session scored on min(k, its length) segments) comes within a tolerance of the
whole-session AUC.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moodstream.model.calibration import DEFAULT_INTERVAL_LEVEL

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
ECE_BINS = 10


@dataclass
class PrefixScores:
    """Per session, its label and its scores after every prefix: calibrated, before calibration, and the
    calibrated score's interval bounds (None without an interval)."""

    labels: np.ndarray
    probabilities: list[np.ndarray]
    uncalibrated: list[np.ndarray]
    low: list[np.ndarray] | None = None
    high: list[np.ndarray] | None = None
    level: float = DEFAULT_INTERVAL_LEVEL

    def rows(self) -> list[dict]:
        return prefix_rows(self.labels, self.probabilities, low=self.low, high=self.high, level=self.level)

    def uncalibrated_rows(self) -> list[dict]:
        return prefix_rows(self.labels, self.uncalibrated)

    def whole_sessions(self) -> np.ndarray:
        return np.asarray([p[-1] for p in self.probabilities], dtype=float)


def prefix_logits(head, sequences: list[torch.Tensor]) -> list[np.ndarray]:
    """Raw session-head logit after each segment of each sequence ([n, D] -> [n])."""
    return [parts.sum(axis=1) for parts in prefix_logit_parts(head, sequences)]


def prefix_probabilities(model, sequences: list[torch.Tensor]) -> list[np.ndarray]:
    """The checkpoint's calibrated session probability after each segment of each sequence."""
    calibration = model.calibration
    return [calibration.probabilities(parts[:, 0], parts[:, 1])
            for parts in prefix_logit_parts(model.session_head, sequences)]


@torch.inference_mode()
def prefix_logit_parts(head, sequences: list[torch.Tensor]) -> list[np.ndarray]:
    """The logit's two parts (recurrent, segment evidence) after each segment of each sequence ([n, D] -> [n, 2])."""
    head.eval()
    device = next(head.parameters()).device
    out = []
    for sequence in sequences:
        n = int(sequence.shape[0])
        padded = sequence.to(device, torch.float32)[None].expand(n, -1, -1)
        lengths = torch.arange(1, n + 1, device=device)
        # Zero the steps after each prefix's end: the head masks them, and the LSTM runs forward only.
        keep = (torch.arange(n, device=device)[None, :] < lengths[:, None]).to(padded.dtype)
        recurrent, segment = head.logit_parts(padded * keep[:, :, None], lengths)
        out.append(torch.stack([recurrent, segment], dim=1).double().cpu().numpy())
    return out


def scored_prefixes(calibration, parts: list[np.ndarray]) -> tuple[list[np.ndarray], list | None, list | None]:
    """Per session, the calibrated probability after each prefix and, with replicates, its interval's bounds.

    Through SessionCalibration.score, the function the batch and incremental scorers call."""
    probabilities, low, high = [], [], []
    for session in parts:
        scores = [calibration.score(float(r), float(s)) for r, s in np.asarray(session).reshape(-1, 2)]
        probabilities.append(np.asarray([x.probability for x in scores]))
        low.append(np.asarray([x.low for x in scores], dtype=float))
        high.append(np.asarray([x.high for x in scores], dtype=float))
    if not len(calibration.replicates):
        return probabilities, None, None
    return probabilities, low, high


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def expected_calibration_error(labels, probabilities, bins: int = ECE_BINS) -> float:
    labels = np.asarray(labels, dtype=float)
    probabilities = np.asarray(probabilities, dtype=float)
    if labels.size == 0:
        return math.nan
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            error += chosen.mean() * abs(labels[chosen].mean() - probabilities[chosen].mean())
    return float(error)


def calibrated_ece(probabilities, bins: int = ECE_BINS, draws: int = 1000, seed: int = 0) -> float:
    """The ECE a perfectly calibrated score would show on these predictions: the mean ECE when every outcome
    is drawn from its own probability. On a few dozen sessions it is far from 0, so an ECE near it is as
    good as these sessions can show."""
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.size == 0:
        return math.nan
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    members = np.zeros((probabilities.size, bins))
    members[np.arange(probabilities.size), which] = 1.0
    counts = members.sum(axis=0)
    used = counts > 0
    outcomes = np.random.default_rng(seed).random((draws, probabilities.size)) < probabilities
    rates = (outcomes @ members)[:, used] / counts[used]
    mean_scores = (probabilities @ members)[used] / counts[used]
    return float(np.mean(np.abs(rates - mean_scores) @ (counts[used] / probabilities.size)))


PROBABILITY_FLOOR = 1e-12   # log loss of a saturated wrong score: about 27.6 nats, not infinity
COVERAGE_BINS = 5


def log_loss(labels, probabilities) -> float:
    labels = np.asarray(labels, dtype=float)
    p = np.clip(np.asarray(probabilities, dtype=float), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return float(np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p))))


def _bins(probabilities: np.ndarray, bins: int) -> list[np.ndarray]:
    return np.array_split(np.argsort(probabilities, kind="stable"), min(bins, probabilities.size))


def interval_coverage(labels, probabilities, low, high, bins: int = COVERAGE_BINS) -> float:
    """Share of predictions whose interval holds the observed outcome rate of their bin (equal-count bins by
    probability).

    What an interval at level L promises: among predictions near p, the outcome rate lies inside it about
    L of the time. A bin's observed rate is that outcome rate, measured on the predictions themselves; with
    a few predictions a bin, it is often exactly 0 or 1, which no interval of a logistic score reaches
    (see sampled_coverage).
    """
    labels, probabilities = np.asarray(labels, dtype=float), np.asarray(probabilities, dtype=float)
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    if labels.size == 0:
        return math.nan
    covered = 0
    for chunk in _bins(probabilities, bins):
        rate = labels[chunk].mean()
        covered += int(np.sum((low[chunk] <= rate + 1e-12) & (rate <= high[chunk] + 1e-12)))
    return covered / labels.size


def sampled_coverage(labels, probabilities, low, high, level: float, bins: int = COVERAGE_BINS) -> float:
    """interval_coverage allowing for the bin's size: a prediction counts as covered when its bin's number of
    positives (n predictions, k positive) is one its interval makes plausible at the same level, between the
    (1 - level) / 2 quantile of Binomial(n, low) and the (1 + level) / 2 quantile of Binomial(n, high).

    It judges the interval together with the bin's sampling noise, so it is the lenient one: a calibrated
    score with no interval at all would meet it about `level` of the time.
    """
    from scipy.stats import binom

    labels, probabilities = np.asarray(labels, dtype=float), np.asarray(probabilities, dtype=float)
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    if labels.size == 0:
        return math.nan
    tail = (1 - level) / 2
    covered = 0
    for chunk in _bins(probabilities, bins):
        n, k = chunk.size, labels[chunk].sum()
        covered += int(np.sum((binom.ppf(tail, n, low[chunk]) <= k) & (k <= binom.ppf(1 - tail, n, high[chunk]))))
    return covered / labels.size


def _row(name: str, labels: np.ndarray, probabilities: np.ndarray, low=None, high=None, level=None) -> dict:
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(labels, probabilities)) if len(set(labels.tolist())) == 2 else math.nan
    row = {"prefix": name, "sessions": int(labels.size), "positives": int(labels.sum()), "auc": auc,
           "log_loss": log_loss(labels, probabilities), "brier": float(np.mean((probabilities - labels) ** 2)),
           "ece": expected_calibration_error(labels, probabilities), "calibrated_ece": calibrated_ece(probabilities)}
    if low is not None:
        row["coverage"] = interval_coverage(labels, probabilities, low, high)
        row["sampled_coverage"] = sampled_coverage(labels, probabilities, low, high, level)
        row["interval_width"] = float(np.mean(np.asarray(high) - np.asarray(low)))
    return row


def prefix_points(lengths, max_segments: int | None = None) -> list[tuple[str, list[tuple[int, int]]]]:
    """(row name, [(session, index of its prefix)]) after k = 1, 2, ... segments, then at 25/50/75/100 %.

    Row k leaves out the sessions shorter than k, and stops when fewer than 2 sessions are that long.
    """
    lengths = [int(n) for n in lengths]
    points = []
    longest = max(lengths, default=0)
    for k in range(1, min(longest, max_segments or longest) + 1):
        chosen = [(i, k - 1) for i, n in enumerate(lengths) if n >= k]
        if len(chosen) < 2:
            break
        points.append((f"{k} segment{'s' if k > 1 else ''}", chosen))
    for fraction in FRACTIONS:
        points.append((f"{round(100 * fraction)} %",
                       [(i, max(1, math.ceil(fraction * n)) - 1) for i, n in enumerate(lengths)]))
    return points


def prefix_rows(labels, prefix_probabilities: list[np.ndarray], max_segments: int | None = None,
                low: list[np.ndarray] | None = None, high: list[np.ndarray] | None = None,
                level: float = DEFAULT_INTERVAL_LEVEL) -> list[dict]:
    """Metric rows after k = 1, 2, ... segments, then at 25/50/75/100 % of each session.

    With the intervals' bounds (`low`, `high`, per session and prefix, at `level`) each row also gives their
    coverage, both ways, and their mean width.
    """
    labels = np.asarray(labels, dtype=int)
    rows = []
    for name, chosen in prefix_points([len(p) for p in prefix_probabilities], max_segments):
        pick = lambda values: np.asarray([values[i][j] for i, j in chosen], dtype=float)  # noqa: E731
        rows.append(_row(name, labels[[i for i, _ in chosen]], pick(prefix_probabilities),
                         *((pick(low), pick(high), level) if low is not None else ())))
    return rows


def _pct(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def reliability_panels(labels, prefix_probabilities: list[np.ndarray], max_segments: int = 7) -> list[tuple]:
    """(row name, labels, probabilities) after k = 1 ... max_segments segments, at 50 % and at 100 % of each session."""
    labels = np.asarray(labels)
    panels = []
    for name, chosen in prefix_points([len(p) for p in prefix_probabilities], max_segments):
        if name.endswith("%") and name not in ("50 %", "100 %"):
            continue
        panels.append((name, labels[[i for i, _ in chosen]],
                       np.asarray([prefix_probabilities[i][j] for i, j in chosen], dtype=float)))
    return panels


def _number(row: dict, key: str) -> str:
    value = row.get(key)
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def prefix_markdown(rows: list[dict], uncalibrated: list[dict] | None = None) -> str:
    """The prefix table; with `uncalibrated`, the log loss, Brier score and ECE before calibration beside them.

    Rows with intervals add their coverage (interval_coverage, sampled_coverage) and mean width."""
    coverage = any("coverage" in r for r in rows)
    extra_head, extra_rule = (" interval coverage % (allowing for bin size) | mean interval width |",
                              "---|---|") if coverage else ("", "")
    cell = lambda r: (f" {_pct(r.get('coverage'))} ({_pct(r.get('sampled_coverage'))}) | "  # noqa: E731
                      f"{_number(r, 'interval_width')} |") if coverage else ""
    if uncalibrated is None:
        lines = [f"| scored after | sessions (positive) | AUC | log loss | Brier | ECE % | ECE % if calibrated |"
                 f"{extra_head}", f"|---|---|---|---|---|---|---|{extra_rule}"]
        for r in rows:
            lines.append(f"| {r['prefix']} | {r['sessions']} ({r['positives']}) | {_pct(r['auc'])} | "
                         f"{_number(r, 'log_loss')} | {r['brier']:.3f} | {_pct(r['ece'])} | "
                         f"{_pct(r.get('calibrated_ece'))} |{cell(r)}")
        return "\n".join(lines)
    lines = ["| scored after | sessions (positive) | AUC | log loss (uncalibrated → calibrated) | "
             "Brier (uncalibrated → calibrated) | ECE % (uncalibrated → calibrated) | ECE % if calibrated |"
             f"{extra_head}", f"|---|---|---|---|---|---|---|{extra_rule}"]
    for r, u in zip(rows, uncalibrated):
        lines.append(f"| {r['prefix']} | {r['sessions']} ({r['positives']}) | {_pct(r['auc'])} | "
                     f"{_number(u, 'log_loss')} → {_number(r, 'log_loss')} | {u['brier']:.3f} → {r['brier']:.3f} | "
                     f"{_pct(u['ece'])} → {_pct(r['ece'])} | {_pct(r.get('calibrated_ece'))} |{cell(r)}")
    return "\n".join(lines)


def prefix_png(rows: list[dict], uncalibrated: list[dict] | None, path: Path, title: str) -> None:
    from moodstream.trainer.plots import _pyplot, save_figure

    plt = _pyplot()
    by_count = [r for r in rows if r["prefix"].endswith(("segment", "segments"))]
    by_count_raw = [r for r in (uncalibrated or []) if r["prefix"].endswith(("segment", "segments"))]
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.2), dpi=110)
    ks = [int(r["prefix"].split()[0]) for r in by_count]
    for axis, key, label in zip(axes, ("auc", "brier", "ece"), ("session AUC", "Brier score", "ECE")):
        axis.plot(ks, [r[key] for r in by_count], marker="o", label="calibrated" if uncalibrated else None)
        if by_count_raw and key != "auc":
            axis.plot(ks, [r[key] for r in by_count_raw], marker="x", linestyle="--", label="uncalibrated")
            axis.legend(fontsize=7)
        axis.set_xlabel("segments scored")
        axis.set_title(label, fontsize=9)
        axis.set_xticks(ks)
        axis.grid(alpha=0.3)
    save_figure(figure, path, title)


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float] | None:
    """(scale, bias) of sigmoid(scale * logit + bias) by L2-regularised logistic regression; None if unusable.

    The regularisation (scikit-learn's default C = 1) pulls the scale towards 0, i.e. towards
    cautious probabilities, which is the safe side with a few dozen validation prefixes. A
    non-positive scale (validation ranks the wrong way round) is refused: it would flip the score.
    """
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels, dtype=int)
    if len(set(labels.tolist())) < 2:
        return None
    model = LogisticRegression(C=1.0).fit(np.asarray(logits, dtype=float)[:, None], labels)
    scale, bias = float(model.coef_[0, 0]), float(model.intercept_[0])
    if not (scale > 1e-6 and math.isfinite(scale) and math.isfinite(bias)):
        return None
    return scale, bias


def platt_cross_validated(session_logits: list[np.ndarray], labels) -> tuple[float, float] | None:
    """Held-out log loss per prefix of Platt scaling against none, leaving out one validation session at a time.

    Each session's prefixes are scored by a fit on the other sessions' prefixes (prefixes of one session are
    not independent, so they stay together). None when no fit can be made without one of the sessions.
    """
    calibrated, uncalibrated, count = 0.0, 0.0, 0
    labels = np.asarray(labels, dtype=int)
    for held_out, logits in enumerate(session_logits):
        rest = [i for i in range(len(session_logits)) if i != held_out]
        if not rest:
            return None
        fitted = fit_platt(np.concatenate([session_logits[i] for i in rest]),
                           np.concatenate([[labels[i]] * len(session_logits[i]) for i in rest]))
        if fitted is None:
            return None
        scale, bias = fitted
        target = np.full(len(logits), labels[held_out], dtype=float)
        calibrated += float(np.sum(_log_loss(scale * np.asarray(logits, dtype=float) + bias, target)))
        uncalibrated += float(np.sum(_log_loss(np.asarray(logits, dtype=float), target)))
        count += len(logits)
    return calibrated / count, uncalibrated / count


def _log_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, logits) - labels * logits


def choose_min_evidence(labels, prefix_probabilities: list[np.ndarray], tolerance: float) -> int:
    """Fewest segments k whose validation AUC (each session on min(k, n) segments) is within `tolerance`
    of the whole-session AUC. 1 when validation cannot tell (one class only)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, dtype=int)
    if len(set(labels.tolist())) < 2 or not prefix_probabilities:
        return 1
    longest = max(len(p) for p in prefix_probabilities)
    final = roc_auc_score(labels, [p[-1] for p in prefix_probabilities])
    for k in range(1, longest + 1):
        if roc_auc_score(labels, [p[min(k, len(p)) - 1] for p in prefix_probabilities]) >= final - tolerance:
            return k
    return longest
