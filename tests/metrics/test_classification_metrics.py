"""Classification metrics against scikit-learn (an independent implementation) and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from medssl.metrics.classification import (
    CLASSIFICATION_METRIC_KEYS,
    accuracy,
    auprc,
    auroc,
    average_precision,
    balanced_accuracy,
    binary_auroc,
    classification_metrics,
    confusion_matrix,
    f1_macro,
)


def _random_case(rng: np.random.Generator, n: int, k: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]  # informative but imperfect
    if ties:
        logits = np.round(logits, 0)  # many equal scores
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, labels


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_sklearn_on_random_data(k: int, ties: bool) -> None:
    rng = np.random.default_rng(100 * k + ties)
    for _ in range(5):
        probs, labels = _random_case(rng, 60, k, ties)
        pred = probs.argmax(axis=1)
        got = classification_metrics(probs, labels)
        assert list(got) == list(CLASSIFICATION_METRIC_KEYS)
        assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred), abs=1e-12)
        assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred), abs=1e-12)
        assert got["f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro"), abs=1e-12)
        if k == 2:
            assert got["auroc"] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]), abs=1e-12)
        else:
            assert got["auroc"] == pytest.approx(
                skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"), abs=1e-12)
        onehot = np.eye(k)[labels]
        assert got["auprc"] == pytest.approx(
            skm.average_precision_score(onehot, probs, average="macro"), abs=1e-12)


def test_unnormalised_scores_match_sklearn_per_class() -> None:
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(40, 4))  # e.g. logits or sigmoid outputs: rows do not sum to one
    labels = rng.integers(0, 4, size=40)
    expected_auc = np.mean([skm.roc_auc_score(labels == c, scores[:, c]) for c in range(4)])
    expected_ap = np.mean([skm.average_precision_score(labels == c, scores[:, c]) for c in range(4)])
    assert auroc(scores, labels) == pytest.approx(expected_auc, abs=1e-12)
    assert auprc(scores, labels) == pytest.approx(expected_ap, abs=1e-12)


def test_hand_computed_binary_case() -> None:
    # positives score 0.9, 0.4, 0.6; negatives 0.8, 0.3, 0.1
    p1 = np.array([0.9, 0.8, 0.4, 0.3, 0.6, 0.1])
    labels = np.array([1, 0, 1, 0, 1, 0])
    probs = np.stack([1 - p1, p1], axis=1)
    # AUROC: pairs (pos > neg) out of 9: 0.9 beats 3, 0.6 beats 2, 0.4 beats 2 -> 7/9
    assert auroc(probs, labels) == pytest.approx(7 / 9)
    # AP class 1: ranking 0.9(+) 0.8(-) 0.6(+) 0.4(+) 0.3(-) 0.1(-)
    # recall steps at ranks 1, 3, 4 with precisions 1, 2/3, 3/4
    ap1 = (1 + 2 / 3 + 3 / 4) / 3
    # class 0 (scores 1 - p1, positives = label 0): ranking 0.9(+) 0.7(+) 0.6(-) 0.4(-) 0.2(+) 0.1(-)
    # -> hits at ranks 1, 2, 5 with precisions 1, 1, 3/5
    ap0 = (1 + 1 + 3 / 5) / 3
    assert auprc(probs, labels) == pytest.approx((ap0 + ap1) / 2)
    # predictions (p1 > 0.5): 1 1 0 0 1 0 -> TP=2 FP=1 FN=1 for class 1; class 0: TP=2 FP=1 FN=1
    assert accuracy(probs, labels) == pytest.approx(4 / 6)
    assert f1_macro(probs, labels) == pytest.approx(2 / 3)
    assert balanced_accuracy(probs, labels) == pytest.approx(2 / 3)


def test_hand_computed_ties_and_confusion() -> None:
    # one positive and one negative with the same score: half a pair
    assert binary_auroc([0.5, 0.5], [True, False]) == pytest.approx(0.5)
    assert binary_auroc([0.5, 0.5, 0.2], [True, False, False]) == pytest.approx((0.5 + 1) / 2)
    # AP with a tie at the top: both enter together, precision 1/2 at recall 1
    assert average_precision([0.7, 0.7], [True, False]) == pytest.approx(0.5)
    scores = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.5, 0.0], [0.1, 0.2, 0.7]])
    labels = np.array([0, 1, 1, 1])
    # argmax ties go to the lower index: row 2 predicts class 0
    np.testing.assert_array_equal(confusion_matrix(scores, labels), [[1, 0, 0], [1, 1, 1], [0, 0, 0]])


def test_absent_classes_are_skipped_or_nan() -> None:
    # 3 classes, class 2 never occurs in the labels
    scores = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([0, 1, 0, 1])
    got = classification_metrics(scores, labels)
    auc0 = skm.roc_auc_score(labels == 0, scores[:, 0])
    auc1 = skm.roc_auc_score(labels == 1, scores[:, 1])
    assert got["auroc"] == pytest.approx((auc0 + auc1) / 2)  # class 2 skipped
    ap0 = skm.average_precision_score(labels == 0, scores[:, 0])
    ap1 = skm.average_precision_score(labels == 1, scores[:, 1])
    assert got["auprc"] == pytest.approx((ap0 + ap1) / 2)
    assert got["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)  # recalls of classes 0 and 1
    # class 2 was predicted once but never true: its F1 of 0 counts (sklearn's convention too)
    assert got["f1"] == pytest.approx(skm.f1_score(labels, scores.argmax(1), average="macro"))
    # only one class present: AUROC undefined
    one = classification_metrics(scores[[0, 2]], labels[[0, 2]])
    assert math.isnan(one["auroc"])
    assert one["accuracy"] == 1.0 and one["auprc"] == 1.0
    binary = classification_metrics(np.array([[0.8, 0.2], [0.4, 0.6]]), np.array([1, 1]))
    assert math.isnan(binary["auroc"]) and binary["accuracy"] == 0.5


def test_torch_inputs_and_validation() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    assert accuracy(probs, torch.tensor([0, 1])) == 1.0
    with pytest.raises(ValueError, match="shape"):
        accuracy(np.ones(3), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="labels must lie"):
        accuracy(np.ones((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="NaN"):
        accuracy(np.array([[np.nan, 0.0]]), np.array([0]))
