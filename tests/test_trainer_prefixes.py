"""Scores at every point of a session: prefix logits, prefix metrics, Platt calibration, the evidence rule."""
import numpy as np
import pytest
import torch

from moodstream.model.session_head import SessionHead
from moodstream.trainer.prefixes import (calibrated_ece, choose_min_evidence, expected_calibration_error, fit_platt,
                                          log_loss, platt_cross_validated, prefix_logits, prefix_markdown,
                                          prefix_rows, sampled_coverage, sigmoid)


def test_prefix_logits_equal_the_head_on_each_prefix_alone():
    torch.manual_seed(0)
    head = SessionHead(input_size=5, hidden_size=6, attention_size=4).eval()
    sequences = [torch.randn(7, 5), torch.randn(1, 5), torch.randn(3, 5)]
    for sequence, logits in zip(sequences, prefix_logits(head, sequences)):
        assert logits.shape == (len(sequence),)
        with torch.no_grad():
            alone = [float(head(sequence[None, :k])[0]) for k in range(1, len(sequence) + 1)]
        assert logits == pytest.approx(alone, abs=1e-5)


def test_expected_calibration_error():
    labels = np.array([1, 1, 0, 0])
    assert expected_calibration_error(labels, np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx(0.0)
    # every prediction 0.9 with half positive: |0.5 - 0.9|
    assert expected_calibration_error(labels, np.full(4, 0.9)) == pytest.approx(0.4)


def test_the_ece_a_calibrated_score_would_show_on_few_sessions():
    assert calibrated_ece(np.array([0.0, 1.0, 1.0])) == 0.0   # certain scores: no sampling noise
    # 36 scores of 0.5: the mean |k/36 - 0.5| of a fair coin, about 0.066
    assert calibrated_ece(np.full(36, 0.5)) == pytest.approx(0.066, abs=0.005)
    assert log_loss([1, 0], [1.0, 1.0]) == pytest.approx(0.5 * -np.log(1e-12))  # a wrong certain score is finite


def test_coverage_allowing_for_the_bins_size_judges_counts_by_the_binomial():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    probabilities = np.array([0.05, 0.06, 0.07, 0.08, 0.9, 0.92, 0.94, 0.96])
    # bins of 4: one positive of 4 is plausible for p near 0.07 at 90 %, four of four for p near 0.93
    low, high = probabilities - 0.02, probabilities + 0.02
    assert sampled_coverage(labels, probabilities, low, high, 0.9, bins=2) == 1.0
    # an interval far from a bin's count misses it
    assert sampled_coverage(labels, probabilities, low, np.minimum(high, 0.3), 0.9, bins=2) == 0.5


def test_prefix_rows_by_count_and_by_fraction():
    labels = [1, 0, 1, 0]
    prefixes = [np.array([0.6, 0.7, 0.8, 0.9]), np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.55, 0.9]),
                np.array([0.45])]
    rows = prefix_rows(labels, prefixes)
    names = [r["prefix"] for r in rows]
    assert names == ["1 segment", "2 segments", "3 segments", "4 segments", "25 %", "50 %", "75 %", "100 %"]
    assert [r["sessions"] for r in rows] == [4, 3, 2, 2, 4, 4, 4, 4]
    assert rows[0]["auc"] == 1.0
    # 100 % is each session's last score
    assert rows[-1]["brier"] == pytest.approx(np.mean([(0.9 - 1) ** 2, 0.1 ** 2, (0.9 - 1) ** 2, 0.45 ** 2]))
    # 25 % of 4 segments is the first; of 2 segments, the first too (ceil, at least one)
    assert rows[4]["brier"] == pytest.approx(np.mean([0.4 ** 2, 0.4 ** 2, 0.45 ** 2, 0.45 ** 2]))
    table = prefix_markdown(rows, prefix_rows(labels, [sigmoid(3 * p) for p in prefixes]))
    assert "→" in table and table.count("\n") == len(rows) + 1


def test_platt_scaling_tames_overconfident_logits_and_refuses_a_flip():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    # informative but 5x overconfident logits
    logits = 5 * (labels * 2 - 1 + rng.normal(0, 1.2, 400))
    scale, bias = fit_platt(logits, labels)
    assert 0 < scale < 1
    before = expected_calibration_error(labels, sigmoid(logits))
    after = expected_calibration_error(labels, sigmoid(scale * logits + bias))
    assert after < before / 2
    assert fit_platt(-logits, labels) is None
    assert fit_platt(logits, np.ones_like(labels)) is None


def test_evidence_rule_takes_the_fewest_segments_near_the_whole_session_auc():
    labels = [1, 0, 1, 0]
    # one segment cannot tell the sessions apart; two can
    prefixes = [np.array([0.5, 0.8, 0.9]), np.array([0.5, 0.2, 0.1]), np.array([0.4, 0.7]), np.array([0.6, 0.3])]
    assert choose_min_evidence(labels, prefixes, tolerance=0.05) == 2
    assert choose_min_evidence(labels, prefixes, tolerance=0.9) == 1  # AUC 0.125 after one segment
    assert choose_min_evidence([1, 1], prefixes[:2], tolerance=0.05) == 1  # one class: nothing to learn from


def test_platt_is_cross_validated_by_whole_validation_sessions():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    # 5x overconfident logits, 3 prefixes per session: held out, Platt must beat leaving them as they are
    overconfident = [5 * (np.full(3, 2 * y - 1) + rng.normal(0, 1.2, 3)) for y in labels]
    calibrated, uncalibrated = platt_cross_validated(overconfident, labels)
    assert calibrated < uncalibrated
    # 6 sessions, one of them a confident miss: a fit on the 5 others (separable) sharpens the scores,
    # and held out that miss costs more than the identity's sharpening saves
    few = [0, 0, 1, 1, 0, 1]
    miss = [np.array([-3.0, -3.0]), np.array([-2.5, -2.0]), np.array([2.0, 3.0]), np.array([2.5, 3.0]),
            np.array([1.0, 0.5]), np.array([3.0, 3.5])]
    calibrated, uncalibrated = platt_cross_validated(miss, few)
    assert calibrated >= uncalibrated
    assert platt_cross_validated([np.array([1.0])], [1]) is None  # nothing left to fit on
