"""CORAL distance, selections, CORAL vector and its consistency loss, cosine correlation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medssl.methods.coral import (
    anchor_bank,
    chunked_coral_loss,
    coral_chunk_logits,
    coral_consistency_loss,
    coral_distance,
    coral_matrix,
    coral_vector,
    masked_coral_consistency_loss,
    select_per_class,
    select_per_class_fixed,
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


def _reference_select(pseudo: torch.Tensor, conf: torch.Tensor, n_classes: int, k: int,
                      both_ends: bool) -> dict[int, list[int]]:
    """The per-class form: each class's rows, then top/bottom (or top) k of them."""
    rows = torch.arange(pseudo.numel())
    out = {}
    for c in range(n_classes):
        mask = pseudo == c
        if mask.any():
            pick = select_top_bottom(conf[mask], k) if both_ends else select_top(conf[mask], k)
            out[c] = rows[mask][pick].tolist()
    return out


@pytest.mark.parametrize("both_ends", [True, False])
def test_fixed_selection_equals_the_per_class_selection(both_ends: bool) -> None:
    g = torch.Generator().manual_seed(0)
    for n, k in [(200, 7), (30, 20), (5, 3), (1, 2)]:
        pseudo = torch.randint(0, 3, (n,), generator=g)
        conf = (torch.randint(0, 5, (n,), generator=g).float() - 2) / 4  # ties and negatives: stable order
        index, valid = select_per_class_fixed(pseudo, conf, 3, k, both_ends)
        assert index.shape == valid.shape == (3, 2 * k if both_ends else k)
        got = {c: index[c][valid[c]].tolist() for c in range(3) if valid[c].any()}
        assert got == _reference_select(pseudo, conf, 3, k, both_ends)


def test_fixed_coral_terms_equal_the_vector_form() -> None:
    rng = np.random.default_rng(3)
    feats = torch.from_numpy(rng.normal(size=(60, 4)))
    pseudo = torch.from_numpy(rng.integers(0, 2, size=60))
    conf = torch.from_numpy(rng.random(60))
    anchors = {0: torch.from_numpy(rng.normal(size=(16, 4))), 1: torch.from_numpy(rng.normal(scale=2, size=(16, 4)))}
    feats2 = feats + 0.3 * torch.from_numpy(rng.normal(size=(60, 4)))
    cases = [(pseudo, anchors), (pseudo, {1: anchors[1]}),                    # a missing anchor class
             (torch.where(torch.arange(60) == 7, 1, 0), anchors)]              # a one-row pseudo-class
    for labels, bank_in in cases:
        sel = _reference_select(labels, conf, 2, 5, True)
        reference = {c: torch.tensor(v) for c, v in sel.items()}
        v1, v2 = coral_vector(feats, reference, bank_in), coral_vector(feats2, reference, bank_in)
        index, valid = select_per_class_fixed(labels, conf, 2, 5)
        bank, bank_valid = anchor_bank(bank_in, 2, feats)
        d1, pair_valid = coral_matrix(feats[index], valid, bank, bank_valid)
        d2, _ = coral_matrix(feats2[index], valid, bank, bank_valid)
        assert v1 is not None and v2 is not None
        assert torch.allclose(d1[pair_valid], v1, rtol=1e-10) and torch.allclose(d2[pair_valid], v2, rtol=1e-10)
        expected = coral_consistency_loss(v1, v2)
        assert torch.allclose(masked_coral_consistency_loss(d1, d2, pair_valid), expected, rtol=1e-10)
    # nothing formed: 0 with finite zero gradients (the step still reaches every head parameter)
    f = feats.clone().requires_grad_(True)
    index, valid = select_per_class_fixed(pseudo, conf, 2, 5)
    bank, bank_valid = anchor_bank({}, 2, f)
    d, pair_valid = coral_matrix(f[index], valid, bank, bank_valid)
    loss = masked_coral_consistency_loss(d, d, pair_valid)
    loss.backward()
    assert loss.item() == 0.0 and not pair_valid.any() and bool((f.grad == 0).all())


def test_masked_correlation_equals_the_per_class_form() -> None:
    from medssl.methods.correlation import masked_correlation_consistency_loss, masked_correlation_rows

    rng = np.random.default_rng(4)
    feats, feats2 = (torch.from_numpy(rng.normal(size=(40, 3))) for _ in range(2))
    anchors = {0: torch.from_numpy(rng.normal(size=(6, 3))), 1: torch.from_numpy(rng.normal(size=(5, 3)))}
    conf = torch.from_numpy(rng.random(40))
    for pseudo in (torch.from_numpy(rng.integers(0, 2, size=40)), torch.where(torch.arange(40) == 3, 1, 0)):
        reference = {c: torch.tensor(v) for c, v in _reference_select(pseudo, conf, 2, 6, False).items()}
        c1 = correlation_matrix(feats, reference, anchors, temperature=0.1)
        c2 = correlation_matrix(feats2, reference, anchors, temperature=0.1)
        expected = correlation_consistency_loss(c1, c2)
        index, valid = select_per_class_fixed(pseudo, conf, 2, 6, both_ends=False)
        m1 = masked_correlation_rows(feats[index], valid, anchors, temperature=0.1)
        m2 = masked_correlation_rows(feats2[index], valid, anchors, temperature=0.1)
        assert m1 is not None and m2 is not None
        (p1, rows), (p2, _) = m1, m2
        assert int(rows.sum()) == c1.shape[0]  # a one-row class is left out, as in the per-class form
        torch.testing.assert_close(p1[rows], c1)
        torch.testing.assert_close(masked_correlation_consistency_loss(p1, p2, rows), expected)
    assert masked_correlation_rows(feats[index], valid, {}) is None
