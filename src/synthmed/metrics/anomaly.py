"""Voxel-level scores of an anomaly map against a lesion label: AUROC, AUPRC, and the Dice of a thresholded map.

Anomaly detection papers report the *best achievable* Dice (the threshold chosen on the test data itself), which
flatters every method; here the threshold can be chosen on validation subjects (:func:`best_dice`) and then applied
to test subjects (:func:`dice_at`), and both figures are reported.
"""

from __future__ import annotations

import numpy as np

from synthmed.errors import SynthmedError


def _flat(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise SynthmedError(f"anomaly scores: {scores.size} scores but {labels.size} labels")
    if not np.isfinite(scores).all():
        raise SynthmedError("anomaly scores: the map has non-finite values")
    return scores, labels


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve: the probability that a lesion voxel scores above a healthy one (ties count
    half), by the rank-sum statistic. None when the labels hold only one class."""
    scores, labels = _flat(scores, labels)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average ranks over ties
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def _curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives at every distinct threshold (descending), and those thresholds."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_value = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    true_positives = np.cumsum(sorted_labels)[last_of_value]
    false_positives = np.cumsum(~sorted_labels)[last_of_value]
    return true_positives, false_positives, sorted_scores[last_of_value]


def auprc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the precision-recall curve as average precision (precision at each threshold weighted by the
    recall it adds; no interpolation). None without lesion voxels."""
    scores, labels = _flat(scores, labels)
    positives = int(labels.sum())
    if positives == 0:
        return None
    true_positives, false_positives, _ = _curve(scores, labels)
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_dice(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The highest Dice over all thresholds (a voxel is anomalous when its score is >= the threshold) and that
    threshold. Dice 0 (threshold +inf) without lesion voxels."""
    scores, labels = _flat(scores, labels)
    positives = int(labels.sum())
    if positives == 0:
        return 0.0, float("inf")
    true_positives, false_positives, thresholds = _curve(scores, labels)
    dice = 2 * true_positives / (2 * true_positives + false_positives + (positives - true_positives))
    best = int(np.argmax(dice))
    return float(dice[best]), float(thresholds[best])


def dice_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Dice of ``scores >= threshold`` against the labels (1 when both are empty)."""
    scores, labels = _flat(scores, labels)
    predicted = scores >= threshold
    denominator = int(predicted.sum()) + int(labels.sum())
    if denominator == 0:
        return 1.0
    return float(2 * np.logical_and(predicted, labels).sum() / denominator)
