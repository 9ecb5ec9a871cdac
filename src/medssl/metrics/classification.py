"""Classification metrics from class scores: accuracy, balanced accuracy, AUROC, AUPRC and F1.

Every function takes ``scores`` (N, K) and ``labels`` (N,):

* ``scores``: one score per sample and class, larger = more likely (softmax probabilities, or
  per-class sigmoid outputs; rows need not sum to one). The predicted class is the row's argmax
  (the lowest index wins a tie).
* ``labels``: integer class indices in ``[0, K)``.

Numpy arrays and torch tensors are accepted. Classes that do not occur in ``labels`` are handled as
follows (so a small validation set that misses a class still gives numbers):

* balanced accuracy: mean recall over the classes present in ``labels``.
* AUROC: K = 2 is the binary AUROC of ``scores[:, 1]`` (class 1 = positive), NaN unless both classes
  occur. K > 2 is the macro mean of the one-vs-rest AUROCs of the classes that occur in ``labels``
  (a class that is absent, or that every sample belongs to, is skipped); NaN if no class qualifies.
* AUPRC: macro mean of the one-vs-rest average precisions of the classes that occur in ``labels``
  (also for K = 2); average precision is ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score
  thresholds, without interpolation.
* F1: macro mean of the per-class F1 over the classes that occur in ``labels`` or in the
  predictions (a class in neither has no defined F1; one predicted but never true scores 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medssl.tensors import to_numpy

__all__ = [
    "CLASSIFICATION_METRIC_KEYS",
    "accuracy",
    "auprc",
    "auroc",
    "average_precision",
    "balanced_accuracy",
    "binary_auroc",
    "classification_metrics",
    "confusion_matrix",
    "f1_macro",
]

#: Keys of :func:`classification_metrics`, in report order.
CLASSIFICATION_METRIC_KEYS = ("accuracy", "balanced_accuracy", "auroc", "auprc", "f1")


def _check(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) float64 scores and (N,) int64 labels, validated."""
    s = to_numpy(scores).astype(np.float64)
    y = to_numpy(labels)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"scores must have shape (N, K) with K >= 2 classes, got {s.shape}")
    if y.ndim != 1 or y.shape[0] != s.shape[0]:
        raise ValueError(f"labels must have shape (N,) = ({s.shape[0]},), got {y.shape}")
    if s.shape[0] == 0:
        raise ValueError("no samples")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("labels must be integer class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= s.shape[1]:
        raise ValueError(f"labels must lie in [0, {s.shape[1]}), got values in [{y.min()}, {y.max()}]")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    return s, y


def confusion_matrix(scores: Any, labels: Any) -> np.ndarray:
    """(K, K) int64 counts; entry ``[t, p]`` = samples of true class ``t`` predicted as ``p``."""
    s, y = _check(scores, labels)
    k = s.shape[1]
    pred = s.argmax(axis=1)
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def accuracy(scores: Any, labels: Any) -> float:
    """Fraction of samples whose argmax class equals the label."""
    s, y = _check(scores, labels)
    return float(np.mean(s.argmax(axis=1) == y))


def balanced_accuracy(scores: Any, labels: Any) -> float:
    """Mean per-class recall over the classes present in ``labels``."""
    cm = confusion_matrix(scores, labels)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def binary_auroc(score: Any, positive: Any) -> float:
    """Area under the ROC curve of ``score`` (N,) for the boolean targets ``positive`` (N,).

    Computed as the Mann-Whitney statistic with average ranks for ties (a tied positive/negative pair
    counts one half). NaN when ``positive`` has no positives or no negatives.
    """
    from scipy.stats import rankdata

    x = to_numpy(score).astype(np.float64).ravel()
    t = to_numpy(positive).astype(bool).ravel()
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(x)  # 1-based, ties get their average rank
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(score: Any, positive: Any) -> float:
    """Average precision of ``score`` (N,) for boolean targets (N,); NaN without positives.

    ``AP = sum_n (R_n - R_{n-1}) P_n`` where ``n`` runs over the distinct score thresholds from the
    highest down and samples with equal scores enter together.
    """
    x = to_numpy(score).astype(np.float64).ravel()
    t = to_numpy(positive).astype(bool).ravel()
    n_pos = int(t.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-x, kind="stable")
    xs, ts = x[order], t[order]
    last_of_threshold = np.r_[np.nonzero(np.diff(xs))[0], xs.size - 1]
    tp = np.cumsum(ts)[last_of_threshold].astype(np.float64)
    seen = (last_of_threshold + 1).astype(np.float64)
    precision = tp / seen
    recall = tp / n_pos
    recall_gain = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_gain * precision))


def auroc(scores: Any, labels: Any) -> float:
    """Binary AUROC of ``scores[:, 1]`` for K = 2; macro one-vs-rest AUROC over present classes for K > 2."""
    s, y = _check(scores, labels)
    if s.shape[1] == 2:
        return binary_auroc(s[:, 1], y == 1)
    values = [binary_auroc(s[:, k], y == k) for k in range(s.shape[1])]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def auprc(scores: Any, labels: Any) -> float:
    """Macro one-vs-rest average precision over the classes present in ``labels``."""
    s, y = _check(scores, labels)
    values = [average_precision(s[:, k], y == k) for k in range(s.shape[1]) if np.any(y == k)]
    return float(np.mean(values))


def f1_macro(scores: Any, labels: Any) -> float:
    """Macro F1 of the argmax predictions over the classes present in ``labels`` or the predictions."""
    cm = confusion_matrix(scores, labels)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    used = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(np.mean(2 * tp[used] / (2 * tp[used] + fp[used] + fn[used])))


def classification_metrics(scores: Any, labels: Any) -> dict[str, float]:
    """All metrics of :data:`CLASSIFICATION_METRIC_KEYS` for ``scores`` (N, K) and ``labels`` (N,).

    AUROC may be NaN (see the module notes on absent classes); the other values are always defined.
    """
    s, y = _check(scores, labels)
    return {
        "accuracy": accuracy(s, y),
        "balanced_accuracy": balanced_accuracy(s, y),
        "auroc": auroc(s, y),
        "auprc": auprc(s, y),
        "f1": f1_macro(s, y),
    }
