"""CORAL distance, selections, CORAL vector and its consistency loss, cosine correlation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medssl.methods.coral import (
    chunked_coral_loss,
    coral_chunk_logits,
    coral_consistency_loss,
    coral_distance,
    coral_vector,
    select_per_class,
    select_top,
    select_top_bottom,
)
from medssl.methods.correlation import correlation_consistency_loss, correlation_matrix
from medssl.methods.pooled import agreement_mask, both_correct_mask


def np_coral(a: np.ndarray, b: np.ndarray) -> float:
    d = a.shape[1]
    return float(((np.cov(a, rowvar=False) - np.cov(b, rowvar=False)) ** 2).sum() / (4 * d * d))


def test_coral_distance_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 5)), rng.normal(scale=2.0, size=(30, 5)) + 1.0
    got = coral_distance(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert math.isclose(got, np_coral(a, b), rel_tol=1e-10)
    assert coral_distance(torch.from_numpy(a), torch.from_numpy(a + 7.0)).item() < 1e-20  # shift-invariant
    with pytest.raises(ValueError):
        coral_distance(torch.zeros(1, 5), torch.zeros(3, 5))


def test_select_top_bottom_counts_and_members() -> None:
    conf = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.95])
    idx = select_top_bottom(conf, 3)
    assert idx.tolist() == [9, 1, 5, 4, 6, 2]  # top 3 (0.95, 0.9, 0.8) then bottom 3 (0.3, 0.2, 0.1)
    assert select_top_bottom(conf, 5).numel() == 10
    few = select_top_bottom(conf[:4], 3)  # fewer voxels than 2k: every voxel once
    assert sorted(few.tolist()) == [0, 1, 2, 3]
    assert select_top_bottom(conf[:2], 3).numel() == 2
    assert select_top_bottom(torch.empty(0), 3).numel() == 0
    assert select_top(conf, 2).tolist() == [9, 1]
    assert select_top(conf[:2], 5).tolist() == [1, 0]


def test_select_per_class_returns_global_indices() -> None:
    pseudo = torch.tensor([0, 1, 0, 1, 1, 0, 1])
    conf = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.99, 0.5, 0.55])
    sel = select_per_class(pseudo, conf, 2, k=1)
    assert sel[0].tolist() == [0, 5]
    assert sel[1].tolist() == [4, 6]
    top = select_per_class(pseudo, conf, 3, k=2, both_ends=False)
    assert set(top) == {0, 1}  # class 2 has no rows
    assert top[1].tolist() == [4, 1]


def test_masks() -> None:
    p1 = torch.tensor([[0, 1, 1, 0]])
    p2 = torch.tensor([[0, 1, 0, 1]])
    y = torch.tensor([[0, 1, 1, 1]])
    assert agreement_mask(p1, p2).tolist() == [[True, True, False, False]]
    assert both_correct_mask(p1, p2, y).tolist() == [[True, True, False, False]]
    assert both_correct_mask(p1, p1, y).tolist() == [[True, True, True, False]]


def test_coral_vector_order_and_values() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(40, 4))
    anchors = {0: rng.normal(size=(16, 4)), 1: rng.normal(scale=3, size=(16, 4))}
    sel = {0: np.arange(0, 20), 1: np.arange(20, 40)}
    vec = coral_vector(torch.from_numpy(feats), {k: torch.from_numpy(v) for k, v in sel.items()},
                       {k: torch.from_numpy(v) for k, v in anchors.items()})
    expected = [np_coral(feats[sel[u]], anchors[a]) for u in (0, 1) for a in (0, 1)]
    assert vec is not None and np.allclose(vec.numpy(), expected)
    # a missing anchor class and a one-row pseudo-class shrink the vector
    short = coral_vector(torch.from_numpy(feats), {0: torch.arange(20), 1: torch.tensor([25])},
                         {1: torch.from_numpy(anchors[1])})
    assert short is not None and np.allclose(short.numpy(), [np_coral(feats[:20], anchors[1])])
    assert coral_vector(torch.from_numpy(feats), {0: torch.arange(20)}, {}) is None


def test_coral_consistency_loss_soft_ce_over_length() -> None:
    v1 = torch.tensor([0.3, 0.1, 0.5, 0.2], requires_grad=True)
    v2 = torch.tensor([0.2, 0.4, 0.1, 0.3], requires_grad=True)
    x = np.array([0.3, 0.1, 0.5, 0.2])
    log_softmax = x - np.log(np.exp(x).sum())
    expected = -(np.array([0.2, 0.4, 0.1, 0.3]) * log_softmax).sum() / 4
    loss = coral_consistency_loss(v1, v2)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    loss.backward()
    assert v2.grad is not None and torch.allclose(v2.grad, -torch.from_numpy(log_softmax).float() / 4)
    v2.grad = None
    coral_consistency_loss(v1, v2, detach_target=True).backward()
    assert v2.grad is None
    with pytest.raises(ValueError):
        coral_consistency_loss(v1, v2[:3])


def test_chunked_variant_shapes() -> None:
    torch.manual_seed(0)
    feats = torch.randn(30, 3)
    anchors = {0: torch.randn(8, 3), 1: torch.randn(8, 3)}
    sel = {0: torch.arange(0, 11), 1: torch.arange(11, 30)}
    logits = coral_chunk_logits(feats, sel, anchors, chunk_size=5, temperature=0.1)
    # class 0: chunks 5, 5, 1 (dropped); class 1: 5, 5, 5, 4
    assert logits is not None and logits.shape == (6, 2)
    first = -coral_distance(feats[0:5], anchors[1]) / 0.1
    assert torch.isclose(logits[0, 1], first)
    other = logits.flip(0)
    loss = chunked_coral_loss(logits, other)
    p1, p2 = torch.softmax(logits, 1), torch.softmax(other, 1)  # by hand: symmetric soft CE per chunk
    by_hand = 0.5 * (-(p2 * p1.log()).sum() - (p1 * p2.log()).sum()) / logits.shape[0]
    assert torch.isclose(loss, by_hand, rtol=1e-5)
    assert chunked_coral_loss(logits, logits) > 0  # entropy of itself


def test_cosine_correlation_matrix_and_loss() -> None:
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(10, 3))
    anchors = {0: rng.normal(size=(4, 3)), 1: rng.normal(size=(5, 3))}
    sel = {0: np.array([0, 1, 2]), 1: np.array([5, 6])}
    corr = correlation_matrix(torch.from_numpy(feats), {k: torch.from_numpy(v) for k, v in sel.items()},
                              {k: torch.from_numpy(v) for k, v in anchors.items()}, temperature=0.1)
    rows = feats[[0, 1, 2, 5, 6]]
    bank = np.concatenate([anchors[0], anchors[1]])
    cos = (rows / np.linalg.norm(rows, axis=1, keepdims=True)) @ (bank / np.linalg.norm(bank, axis=1,
                                                                                        keepdims=True)).T
    e = np.exp(cos / 0.1)
    expected = e / e.sum(1, keepdims=True)
    assert corr is not None and np.allclose(corr.numpy(), expected)
    other = torch.from_numpy(expected[::-1].copy())
    loss = correlation_consistency_loss(corr, other)
    assert math.isclose(loss.item(), float(-(expected[::-1] * np.log(expected + 1e-8)).sum() / 5), rel_tol=1e-9)
    dot = correlation_matrix(torch.from_numpy(feats), {0: torch.tensor([0, 1])},
                             {0: torch.from_numpy(anchors[0])}, temperature=1.0, similarity="dot")
    e2 = np.exp(feats[[0, 1]] @ anchors[0].T)
    assert dot is not None and np.allclose(dot.numpy(), e2 / e2.sum(1, keepdims=True))
