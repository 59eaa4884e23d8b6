"""Scores at every point of a session: prefix metrics, calibration and the evidence rule.

A live subscriber sees the session score after 1, 2, 3 ... segments, so every
checkpoint is evaluated on prefixes: after k segments (sessions shorter than k
are left out of row k) and at 25/50/75/100 % of each session (ceil of the
fraction, at least one segment). Each row gives the session AUC, the Brier
score and the expected calibration error (10 equal-width bins).

Calibration is Platt scaling of the session head's logit, fitted on every
prefix of the validation sessions (never on test), so it holds early in a
session as well as at its end. The evidence rule is the fewest segments after
which the validation AUC (each session scored on min(k, its length) segments)
comes within a tolerance of the whole-session AUC.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
ECE_BINS = 10


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


def _row(name: str, labels: np.ndarray, probabilities: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(labels, probabilities)) if len(set(labels.tolist())) == 2 else math.nan
    return {"prefix": name, "sessions": int(labels.size), "positives": int(labels.sum()), "auc": auc,
            "brier": float(np.mean((probabilities - labels) ** 2)),
            "ece": expected_calibration_error(labels, probabilities)}


def prefix_rows(labels, prefix_probabilities: list[np.ndarray], max_segments: int | None = None) -> list[dict]:
    """Metric rows after k = 1, 2, ... segments, then at 25/50/75/100 % of each session."""
    labels = np.asarray(labels, dtype=int)
    lengths = np.asarray([len(p) for p in prefix_probabilities])
    rows = []
    longest = int(lengths.max()) if lengths.size else 0
    for k in range(1, min(longest, max_segments or longest) + 1):
        chosen = lengths >= k
        if chosen.sum() < 2:
            break
        rows.append(_row(f"{k} segment{'s' if k > 1 else ''}", labels[chosen],
                         np.asarray([p[k - 1] for p, c in zip(prefix_probabilities, chosen) if c])))
    for fraction in FRACTIONS:
        at = [p[max(1, math.ceil(fraction * len(p))) - 1] for p in prefix_probabilities]
        rows.append(_row(f"{round(100 * fraction)} %", labels, np.asarray(at)))
    return rows


def _pct(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def prefix_markdown(rows: list[dict], uncalibrated: list[dict] | None = None) -> str:
    """The prefix table; with `uncalibrated`, the Brier score and ECE before calibration beside them."""
    if uncalibrated is None:
        lines = ["| scored after | sessions (positive) | AUC | Brier | ECE |", "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['prefix']} | {r['sessions']} ({r['positives']}) | {_pct(r['auc'])} | "
                         f"{r['brier']:.3f} | {_pct(r['ece'])} |")
        return "\n".join(lines)
    lines = ["| scored after | sessions (positive) | AUC | Brier (uncalibrated → calibrated) | "
             "ECE % (uncalibrated → calibrated) |", "|---|---|---|---|---|"]
    for r, u in zip(rows, uncalibrated):
        lines.append(f"| {r['prefix']} | {r['sessions']} ({r['positives']}) | {_pct(r['auc'])} | "
                     f"{u['brier']:.3f} → {r['brier']:.3f} | {_pct(u['ece'])} → {_pct(r['ece'])} |")
    return "\n".join(lines)


def prefix_png(rows: list[dict], uncalibrated: list[dict] | None, path: Path, title: str) -> None:
    from moodstream.trainer.plots import _pyplot

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
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


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
