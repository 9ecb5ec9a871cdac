"""CORAL correlation: covariance alignment between unlabeled features and labeled anchors
(the CORAL-Correlation Consistency Module of CORN (Li et al., IEEE BIBM 2024, arXiv:2410.15916); CORAL distance: Sun & Saenko, ECCV 2016 workshops, arXiv:1607.01719).

Features are (N, d) row matrices (one row per voxel). ``selections`` map a pseudo-class to indices of
rows; ``anchors`` map an anchor class to its (n_c, d) labeled features from the feature pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor

MIN_ROWS = 2  # an unbiased covariance needs at least two rows


class Rows(Protocol):
    """Feature rows read by index: a (N, d) tensor, or rows computed on demand
    (:class:`medssl.methods.pooled.HeadOutputs`); ``rows[index]`` is (*index.shape, d)."""

    def __getitem__(self, index: Tensor) -> Tensor: ...


def covariance(x: Tensor) -> Tensor:
    """Unbiased covariance (d, d) of the rows of ``x`` (N, d): mean-centred, normalised by N - 1."""
    if x.shape[0] < MIN_ROWS:
        raise ValueError(f"covariance needs at least {MIN_ROWS} rows, got {x.shape[0]}")
    centred = x - x.mean(dim=0, keepdim=True)
    return centred.T @ centred / (x.shape[0] - 1)


def coral_distance(a: Tensor, b: Tensor) -> Tensor:
    """CORAL distance ``||cov(a) - cov(b)||_F^2 / (4 d^2)`` between feature sets a (n_a, d) and b (n_b, d)."""
    d = a.shape[1]
    if b.shape[1] != d:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    return ((covariance(a) - covariance(b)) ** 2).sum() / (4.0 * d * d)


def select_top(conf: Tensor, k: int) -> Tensor:
    """Indices of the ``min(k, N)`` most confident entries of ``conf`` (N,), most confident first."""
    order = torch.sort(conf, descending=True, stable=True).indices
    return order[:max(k, 0)]


def select_top_bottom(conf: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` most and the ``k`` least confident entries of ``conf`` (N,), each entry once.

    Returns ``min(N, 2k)`` indices: the top ``k`` in descending confidence, then the bottom ``k`` (also in
    descending order). When ``N <= 2k`` the two ends overlap and every entry is returned once. Ties keep
    their original order, so the selection is deterministic.
    """
    order = torch.sort(conf, descending=True, stable=True).indices
    k = max(k, 0)
    if order.numel() <= 2 * k:
        return order
    return torch.cat([order[:k], order[order.numel() - k:]])


def descending_keys(conf: Tensor) -> Tensor:
    """(N,) distinct int64 keys ordering ``conf`` (N,) as a stable descending sort would: a larger key comes
    first; equal confidences are ordered by position (earlier first).

    Floating types up to 32 bits: the order-preserving integer image of the float32 bit pattern in the
    high 32 bits, ``N - 1 - position`` in the low 32 bits (no sort needed). float64: the rank from one
    stable sort.
    """
    n = conf.numel()
    position = torch.arange(n, device=conf.device)
    if conf.dtype == torch.float64:
        key = torch.empty_like(position)
        key[torch.sort(conf.reshape(-1), descending=True, stable=True).indices] = n - 1 - position
        return key
    bits = conf.reshape(-1).float().view(torch.int32).long()
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: reverse the magnitude order
    return (bits << 32) | (n - 1 - position)


def select_per_class_fixed(pseudo: Tensor, conf: Tensor, n_classes: int, k: int,
                           both_ends: bool = True) -> tuple[Tensor, Tensor]:
    """Per pseudo-class selection by confidence as fixed-size tensors (no host synchronisation).

    The same rows, in the same order, as :func:`select_top_bottom` / :func:`select_top` applied to each
    class's rows (ties in original order): ``topk`` over the class-masked :func:`descending_keys`, from
    the top (``2k`` or ``k`` rows) and, with ``both_ends``, from the bottom (``k`` rows, used when the
    class has more than ``2k`` rows). No full sort.

    Args:
        pseudo: (N,) pseudo-labels in ``0..n_classes - 1``.
        conf: (N,) confidences used for ranking.
        n_classes: number of classes C.
        k: rows kept at each end (``both_ends``) or at the top.
        both_ends: top and bottom ``k`` (CORN) instead of the top ``k`` (correlation baseline).

    Returns:
        ``(index, valid)``: (C, m) row indices into the N rows and (C, m) bool, ``m = 2k`` (or ``k``);
        row ``c`` lists class c's selection in order, ``valid`` marks the entries that exist.
    """
    k = max(int(k), 0)
    m = 2 * k if both_ends else k
    n = pseudo.numel()
    device = pseudo.device
    member = pseudo.reshape(1, -1) == torch.arange(n_classes, device=device)[:, None]   # (C, N)
    key = descending_keys(conf)[None, :]
    limits = torch.iinfo(torch.int64)
    index = torch.zeros((n_classes, m), dtype=torch.long, device=device)
    top = torch.topk(torch.where(member, key, limits.min), min(m, n), dim=1).indices        # descending
    index[:, :top.shape[1]] = top
    counts = member.sum(dim=1, keepdim=True)
    j = torch.arange(m, device=device)[None, :]
    if both_ends and 0 < k <= n:  # more than 2k rows: the second k are the class's last k, in descending order
        bottom = torch.topk(torch.where(member, key, limits.max), k, dim=1, largest=False).indices.flip(1)
        index[:, k:] = torch.where(counts > m, bottom, index[:, k:])
    return index, j < counts.clamp(max=m)


def select_per_class(pseudo: Tensor, conf: Tensor, n_classes: int, k: int,
                     both_ends: bool = True) -> dict[int, Tensor]:
    """Per pseudo-class selection of rows by confidence.

    Args:
        pseudo: (N,) pseudo-labels.
        conf: (N,) confidences (max probability) used for ranking.
        n_classes: number of classes.
        k: rows kept at each end (``both_ends``) or at the top.
        both_ends: top and bottom ``k`` (CORN) instead of the top ``k`` (correlation baseline).

    Returns:
        class -> (n_i,) indices into the N rows, for every class with at least one row (reads the
        per-class sizes on the host; :func:`select_per_class_fixed` is the synchronisation-free form).
    """
    index, valid = select_per_class_fixed(pseudo, conf, n_classes, k, both_ends)
    sizes = valid.sum(dim=1).tolist()
    return {c: index[c, :size] for c, size in enumerate(sizes) if size > 0}


def coral_vector(features: Tensor, selections: Mapping[int, Tensor],
                 anchors: Mapping[int, Tensor]) -> Tensor | None:
    """CORAL distances of every (pseudo-class, anchor-class) pair that can be formed.

    Order: pseudo-class ascending, then anchor class ascending, i.e. (u0,a0), (u0,a1), (u1,a0), (u1,a1)
    for two classes. A pair needs at least two selected rows and two anchors.

    Args:
        features: (N, d) unlabeled features.
        selections: pseudo-class -> row indices (see :func:`select_per_class`).
        anchors: anchor class -> (n_c, d) labeled features.

    Returns:
        (P,) distances with P <= C * C, or ``None`` when no pair can be formed.
    """
    values = []
    for u in sorted(selections):
        idx = selections[u]
        if idx.numel() < MIN_ROWS:
            continue
        chosen = features[idx]
        for a in sorted(anchors):
            if anchors[a].shape[0] < MIN_ROWS:
                continue
            values.append(coral_distance(chosen, anchors[a].to(chosen.dtype)))
    return torch.stack(values) if values else None


def masked_covariance(x: Tensor, valid: Tensor) -> Tensor:
    """Unbiased covariances (G, d, d) of the valid rows of each group of ``x`` (G, m, d); ``valid`` (G, m)
    bool. A group with fewer than two valid rows gets a finite placeholder (its rows over max(n - 1, 1))."""
    w = valid.to(x.dtype)[..., None]
    n = w.sum(dim=1, keepdim=True)                                  # (G, 1, 1)
    mean = (x * w).sum(dim=1, keepdim=True) / n.clamp(min=1)
    centred = (x - mean) * w
    return centred.transpose(1, 2) @ centred / (n - 1).clamp(min=1)


def coral_matrix(selected: Tensor, valid: Tensor, anchors: Tensor, anchor_valid: Tensor) -> tuple[Tensor, Tensor]:
    """CORAL distances of every (pseudo-class, anchor-class) pair as fixed-size tensors.

    Args:
        selected: (U, m, d) the selected unlabeled features of each pseudo-class (``features[index]`` with
            ``index`` from :func:`select_per_class_fixed`).
        valid: (U, m) bool, which selected entries exist.
        anchors: (A, n_a, d) anchor features per anchor class.
        anchor_valid: (A,) bool, the anchor classes the pool supplied (at least two rows each).

    Returns:
        ``(distances, pair_valid)``: (U * A,) in the order (u0,a0), (u0,a1), (u1,a0), ... and (U * A,)
        bool, true where the pseudo-class has at least two selected rows and the anchor class exists.
        Valid entries equal :func:`coral_distance` to float rounding.
    """
    d = selected.shape[-1]
    cov_u = masked_covariance(selected, valid)                                            # (U, d, d)
    cov_a = masked_covariance(anchors.to(selected.dtype),
                              torch.ones(anchors.shape[:2], dtype=torch.bool, device=anchors.device))
    dist = ((cov_u[:, None] - cov_a[None]) ** 2).sum(dim=(2, 3)) / (4.0 * d * d)         # (U, A)
    pair_valid = (valid.sum(dim=1) >= MIN_ROWS)[:, None] & anchor_valid.to(valid.device)[None, :]
    return dist.reshape(-1), pair_valid.reshape(-1)


def anchor_bank(anchors: Mapping[int, Tensor], n_classes: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Anchors as one fixed-size tensor: (C, n, d) rows per class (zeros for an absent class) and (C,) bool.

    ``like`` gives d (its last axis), the dtype and the device. The classes present are known on the host
    (the pool decides them from its counts), so building the bank reads nothing back from the device.
    Every present class must have the same number n of rows (the pool's ``2 * anchors_per_half``);
    classes with fewer than two rows count as absent.
    """
    present = {c: a for c, a in anchors.items() if a.shape[0] >= MIN_ROWS}
    sizes = {a.shape[0] for a in present.values()}
    if len(sizes) > 1:
        raise ValueError(f"anchor classes differ in size: {sorted(sizes)}")
    n = sizes.pop() if sizes else MIN_ROWS
    bank = like.new_zeros((n_classes, n, like.shape[-1]))
    for c, a in present.items():
        bank[c] = a.to(like.dtype)
    valid = torch.tensor([c in present for c in range(n_classes)], device=like.device)
    return bank, valid


def masked_coral_consistency_loss(vec1: Tensor, vec2: Tensor, valid: Tensor, detach_target: bool = False) -> Tensor:
    """:func:`coral_consistency_loss` over the ``valid`` entries of (P,) vectors, without host reads.

    Invalid entries take no part: they are pushed out of the softmax (weight exactly 0) and out of the sum,
    and the length divisor is the number of valid entries. With no valid entry the loss is 0 with zero
    (finite) gradients.
    """
    if vec1.shape != vec2.shape or vec1.shape != valid.shape:
        raise ValueError(f"CORAL vectors differ in shape: {tuple(vec1.shape)}, {tuple(vec2.shape)}, "
                         f"{tuple(valid.shape)}")
    target = vec2.detach() if detach_target else vec2
    logits = vec1.masked_fill(~valid, torch.finfo(vec1.dtype).min)
    terms = torch.where(valid, target * torch.log_softmax(logits, dim=0), torch.zeros_like(vec1))
    return -terms.sum() / valid.sum().clamp(min=1)


def coral_consistency_loss(vec1: Tensor, vec2: Tensor, detach_target: bool = False) -> Tensor:
    """``-(1/P) sum(vec2 * log_softmax(vec1))``: cross-entropy of branch 1's CORAL vector against branch
    2's vector taken as target weights, divided by the vector length P.

    The target is used as is (not normalised) and, as in the reference code, not detached unless
    ``detach_target``.
    """
    if vec1.shape != vec2.shape:
        raise ValueError(f"CORAL vectors differ in shape: {tuple(vec1.shape)} vs {tuple(vec2.shape)}")
    target = vec2.detach() if detach_target else vec2
    return -(target * torch.log_softmax(vec1, dim=0)).sum() / vec1.numel()


def coral_chunk_logits(features: Rows, selections: Mapping[int, Tensor], anchors: Mapping[int, Tensor],
                       chunk_size: int, temperature: float) -> Tensor | None:
    """Experimental chunked CCM (not the published method): ``-D / temperature`` per chunk.

    The selected rows of each pseudo-class are cut, in selection order, into chunks of ``chunk_size``
    rows (a last chunk shorter than two rows is dropped); ``D[j, a]`` is the CORAL distance of chunk j to
    anchor class a.

    Returns:
        (n_chunks, n_anchor_classes) logits, or ``None`` when no chunk or no anchor class is usable.
    """
    classes = [a for a in sorted(anchors) if anchors[a].shape[0] >= MIN_ROWS]
    rows = []
    for u in sorted(selections):
        for chunk in torch.split(selections[u], chunk_size):
            if chunk.numel() < MIN_ROWS:
                continue
            part = features[chunk]
            rows.append(torch.stack([coral_distance(part, anchors[a].to(part.dtype)) for a in classes]))
    if not rows or not classes:
        return None
    return -torch.stack(rows) / temperature


def chunked_coral_loss(logits1: Tensor, logits2: Tensor) -> Tensor:
    """Symmetric soft cross-entropy between the branches' chunk distributions, each against the other's
    detached softmax, averaged over chunks."""
    n = logits1.shape[0]
    p1 = torch.softmax(logits1, dim=1).detach()
    p2 = torch.softmax(logits2, dim=1).detach()
    ce12 = -(p2 * torch.log_softmax(logits1, dim=1)).sum()
    ce21 = -(p1 * torch.log_softmax(logits2, dim=1)).sum()
    return 0.5 * (ce12 + ce21) / n


__all__ = ["MIN_ROWS", "Rows", "anchor_bank", "chunked_coral_loss", "coral_chunk_logits", "coral_consistency_loss",
           "coral_distance", "coral_matrix", "coral_vector", "covariance", "descending_keys",
           "masked_coral_consistency_loss", "masked_covariance", "select_per_class", "select_per_class_fixed",
           "select_top", "select_top_bottom"]
