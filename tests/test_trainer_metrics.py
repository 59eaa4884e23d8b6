"""Metrics against values computed by hand, and the validation-only threshold rule."""
import math

import pytest

from moodstream.trainer.metrics import binary_metrics, choose_threshold, mean_std


def test_binary_metrics_match_hand_computed_values():
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    probs = [0.9, 0.7, 0.4, 0.6, 0.2, 0.1, 0.3, 0.8]
    m = binary_metrics(labels, probs, threshold=0.5)
    # predicted positive: 0.9, 0.7, 0.6, 0.8 -> TP 3 (0.9, 0.7, 0.8), FP 1 (0.6); FN 1 (0.4); TN 3
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 1, 3)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(6 / 8)
    # AUC = fraction of (positive, negative) pairs ranked correctly:
    # positives 0.9, 0.7, 0.4, 0.8 vs negatives 0.6, 0.2, 0.1, 0.3 -> 4 + 4 + 3 + 4 = 15 of 16
    assert m["auc"] == pytest.approx(15 / 16)


def test_f1_is_for_the_depressed_class_and_zero_without_positive_predictions():
    m = binary_metrics([1, 0, 0, 0], [0.2, 0.1, 0.3, 0.4], threshold=0.5)
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    assert m["auc"] == pytest.approx(1 / 3)
    single = binary_metrics([0, 0], [0.2, 0.7], 0.5)
    assert math.isnan(single["auc"])


def test_threshold_maximises_validation_f1():
    labels = [0, 0, 1, 0, 1, 1]
    probs = [0.10, 0.20, 0.30, 0.35, 0.60, 0.80]
    threshold = choose_threshold(labels, probs)
    # candidates between sorted probabilities; F1 is best (6/7) with everything >= 0.30 positive... check:
    # >= 0.25: TP 3 FP 1 -> F1 6/7 = 0.857; >= 0.475: TP 2 FP 0 FN 1 -> 0.8; so 0.25 (midpoint of 0.2, 0.3)
    assert threshold == pytest.approx(0.25)
    assert binary_metrics(labels, probs, threshold)["f1"] == pytest.approx(6 / 7)
    assert choose_threshold([1, 1], [0.2, 0.9]) == 0.5   # one class: no information, keep 0.5


def test_mean_std_uses_the_sample_std_and_skips_nan():
    mean, std = mean_std([0.5, 1.0, float("nan")])
    assert mean == pytest.approx(0.75) and std == pytest.approx(math.sqrt(0.125))
