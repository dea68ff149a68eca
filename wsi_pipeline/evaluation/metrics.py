"""Classification metrics in numpy: ROC AUC and curve, accuracy, balanced accuracy, sensitivity, specificity,
confusion matrix.

Labels are integer class indices. ROC AUC is undefined when the labels hold a single class (no pair of a
positive and a negative to rank); ``roc_auc`` and ``roc_curve`` then raise ``ValueError`` rather than return a
number that could be mistaken for a result."""

from __future__ import annotations

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1…n of ``values``, tied values sharing the mean of their ranks."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Start and end (exclusive) positions of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _binary_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("binary labels must be 0 or 1")
    positives = int(labels.sum())
    if positives in (0, len(labels)):
        raise ValueError("ROC AUC is undefined: the labels hold a single class")
    return labels.astype(bool)


def binary_roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of scores for labels 0/1: the probability that a random positive scores above
    a random negative, ties counting one half (Mann–Whitney U from average ranks)."""
    positive = _binary_labels(labels)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    rank_sum = average_ranks(np.asarray(scores, np.float64))[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC of class probabilities (N, C) or positive-class scores (N,). Two classes: the AUC of the last
    class's score; more: the unweighted mean of one-vs-rest AUCs (every class must occur)."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    if probs.ndim == 1:
        return binary_roc_auc(labels, probs)
    if probs.shape[1] == 2:
        return binary_roc_auc(labels, probs[:, 1])
    return float(np.mean([binary_roc_auc(labels == c, probs[:, c]) for c in range(probs.shape[1])]))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold) at every distinct score, from (0, 0) at threshold
    +inf to (1, 1); a point calls "positive" every score ≥ its threshold."""
    positive = _binary_labels(labels)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last_of_run = np.r_[scores[1:] != scores[:-1], True]
    true_pos = np.cumsum(positive)[last_of_run]
    false_pos = np.cumsum(~positive)[last_of_run]
    fpr = np.r_[0.0, false_pos / false_pos[-1]]
    tpr = np.r_[0.0, true_pos / true_pos[-1]]
    return fpr, tpr, np.r_[np.inf, scores[last_of_run]]


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    if labels.shape != predictions.shape:
        raise ValueError("labels and predictions differ in length")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"{name} must be class indices in [0, {n_classes})")
    return np.bincount(labels * n_classes + predictions, minlength=n_classes**2).reshape(n_classes, n_classes)


def accuracy(confusion: np.ndarray) -> float:
    """Fraction of all samples predicted correctly."""
    return float(np.trace(confusion) / confusion.sum())


def recalls(confusion: np.ndarray) -> np.ndarray:
    """Per-class recall (fraction of each true class predicted as itself); NaN for a class with no samples."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(confusion) / totals


def balanced_accuracy(confusion: np.ndarray) -> float:
    """Mean recall over the classes that occur."""
    return float(np.nanmean(recalls(confusion)))


def _binary_recalls(confusion: np.ndarray) -> np.ndarray:
    if confusion.shape != (2, 2):
        raise ValueError("sensitivity and specificity need a two-class confusion matrix")
    return recalls(confusion)


def sensitivity(confusion: np.ndarray, positive: int = 1) -> float:
    """Binary: recall of the positive class (index ``positive``); NaN without positives."""
    return float(_binary_recalls(confusion)[positive])


def specificity(confusion: np.ndarray, positive: int = 1) -> float:
    """Binary: recall of the negative class (the one that is not ``positive``); NaN without negatives."""
    return float(_binary_recalls(confusion)[1 - positive])
