"""Participant- and segment-level metrics for the depressed (positive) class, and threshold choice.

The threshold is chosen on validation predictions only (`choose_threshold`)
and then applied unchanged to test predictions (`binary_metrics`).
"""
from __future__ import annotations

import math

import numpy as np


def binary_metrics(labels, probabilities, threshold: float) -> dict:
    """Precision, recall, F1 (positive class), AUC, accuracy, sensitivity, specificity and the confusion counts."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    if labels.shape != probabilities.shape or labels.ndim != 1 or labels.size == 0:
        raise ValueError("labels and probabilities must be two non-empty 1-D arrays of the same length")
    predicted = (probabilities >= threshold).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, labels=[1], average=None,
                                                               zero_division=0)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    auc = float(roc_auc_score(labels, probabilities)) if len(set(labels.tolist())) == 2 else math.nan
    return {
        "n": int(labels.size), "positives": int(labels.sum()), "threshold": float(threshold),
        "precision": float(precision[0]), "recall": float(recall[0]), "f1": float(f1[0]), "auc": auc,
        "accuracy": float((predicted == labels).mean()),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else math.nan,
        "specificity": float(tn / (tn + fp)) if tn + fp else math.nan,
        "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn),
    }


def choose_threshold(labels, probabilities) -> float:
    """The threshold that maximises F1 (positive class) on these (validation) predictions.

    Candidates are midpoints between consecutive distinct probabilities; ties
    go to the higher balanced accuracy, then to the threshold nearest 0.5.
    With a single class present, 0.5 is returned.
    """
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    if len(set(labels.tolist())) < 2:
        return 0.5
    values = np.unique(probabilities)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    candidates = np.clip(candidates, 1e-6, 1 - 1e-6)
    best, best_key = 0.5, None
    for threshold in candidates:
        predicted = probabilities >= threshold
        tp = int(np.sum(predicted & (labels == 1)))
        fp = int(np.sum(predicted & (labels == 0)))
        fn = int(np.sum(~predicted & (labels == 1)))
        tn = int(np.sum(~predicted & (labels == 0)))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        balanced = 0.5 * (tp / max(1, tp + fn) + tn / max(1, tn + fp))
        key = (round(f1, 12), round(balanced, 12), -abs(threshold - 0.5))
        if best_key is None or key > best_key:
            best, best_key = float(threshold), key
    return best


def mean_std(values) -> tuple[float, float]:
    array = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if array.size == 0:
        return math.nan, math.nan
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def pooled_metrics(counts: list[dict]) -> dict:
    """F1, sensitivity and specificity of summed confusion counts (each fold at its own carried threshold)."""
    tp, fp, tn, fn = (sum(int(c[key]) for c in counts) for key in ("tp", "fp", "tn", "fn"))
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
            "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
            "specificity": tn / (tn + fp) if tn + fp else math.nan}
