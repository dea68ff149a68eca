"""Metrics against hand-computed cases and a brute-force pair count."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_pipeline.evaluation.metrics import (
    accuracy,
    average_ranks,
    balanced_accuracy,
    confusion_matrix,
    roc_auc,
    roc_curve,
    sensitivity,
    specificity,
)


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Definition: P(positive scores above negative), ties one half, by comparing every pair."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_average_ranks_share_ties():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),
        ([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9], 0.875),  # one tied positive/negative pair counts 1/2
        ([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3], 0.5),
        ([0, 0, 1], [0.1, 0.2, 0.9], 1.0),
        ([1, 1, 0], [0.1, 0.2, 0.9], 0.0),
    ],
)
def test_binary_auc_by_hand(labels, scores, expected):
    assert roc_auc(np.array(labels), np.array(scores)) == pytest.approx(expected)


def test_auc_equals_pair_count_with_many_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.integers(0, 7, 500).astype(float)  # heavy ties
    assert roc_auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores))
    probs = np.stack([1 - scores / 7, scores / 7], axis=1)  # (N, 2): the last column is scored
    assert roc_auc(labels, probs) == pytest.approx(pairwise_auc(labels, scores))


def test_multiclass_auc_is_macro_one_vs_rest():
    labels = np.array([0, 0, 1, 2])
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.3, 0.4, 0.3], [0.1, 0.2, 0.7]])
    # class 0: 3 of 4 pairs; class 1: 2 of 3; class 2: 3 of 3
    assert roc_auc(labels, probs) == pytest.approx((3 / 4 + 2 / 3 + 1) / 3)


def test_auc_of_one_class_is_an_error():
    with pytest.raises(ValueError, match="single class"):
        roc_auc(np.array([1, 1, 1]), np.array([0.2, 0.5, 0.9]))
    with pytest.raises(ValueError, match="single class"):  # class 2 never occurs
        roc_auc(np.array([0, 1, 1]), np.full((3, 3), 1 / 3))
    with pytest.raises(ValueError, match="single class"):
        roc_curve(np.array([0, 0]), np.array([0.2, 0.5]))


def test_roc_curve_points_and_area():
    fpr, tpr, thresholds = roc_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1]
    assert tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert thresholds.tolist() == [np.inf, 0.8, 0.4, 0.35, 0.1]
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.9])
    fpr, tpr, _ = roc_curve(labels, scores)  # the tie is one diagonal step
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(labels, scores))


def test_confusion_and_rates_by_hand():
    cm = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 2, 1, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert accuracy(cm) == pytest.approx(3 / 4)
    assert balanced_accuracy(cm) == pytest.approx((1 + 0.5 + 1) / 3)
    binary = confusion_matrix(np.array([0, 0, 0, 1, 1]), np.array([0, 1, 0, 1, 0]), 2)
    assert binary.tolist() == [[2, 1], [1, 1]]
    assert sensitivity(binary) == pytest.approx(1 / 2)
    assert specificity(binary) == pytest.approx(2 / 3)
    assert balanced_accuracy(np.array([[2, 1], [0, 0]])) == pytest.approx(2 / 3)  # absent class skipped
    assert np.isnan(sensitivity(np.array([[2, 1], [0, 0]])))
    with pytest.raises(ValueError, match="two-class"):
        sensitivity(cm)
    with pytest.raises(ValueError, match="class indices"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
