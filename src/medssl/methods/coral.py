"""CORAL correlation: covariance alignment between unlabeled features and labeled anchors
(the CORAL-Correlation Consistency Module of CORN (Li et al., IEEE BIBM 2024, arXiv:2410.15916); CORAL distance: Sun & Saenko, ECCV 2016 workshops, arXiv:1607.01719).

Features are (N, d) row matrices (one row per voxel). ``selections`` map a pseudo-class to indices of
rows; ``anchors`` map an anchor class to its (n_c, d) labeled features from the feature pool.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

MIN_ROWS = 2  # an unbiased covariance needs at least two rows


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
        class -> (n_i,) indices into the N rows, for every class with at least one row.
    """
    rows = torch.arange(pseudo.numel(), device=pseudo.device)
    out: dict[int, Tensor] = {}
    for c in range(n_classes):
        mask = pseudo == c
        if not bool(mask.any()):
            continue
        idx = rows[mask]
        pick = select_top_bottom(conf[mask], k) if both_ends else select_top(conf[mask], k)
        out[c] = idx[pick]
    return out


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


def coral_chunk_logits(features: Tensor, selections: Mapping[int, Tensor], anchors: Mapping[int, Tensor],
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


__all__ = ["MIN_ROWS", "chunked_coral_loss", "coral_chunk_logits", "coral_consistency_loss", "coral_distance",
           "coral_vector", "covariance", "select_per_class", "select_top", "select_top_bottom"]
