"""Cosine correlation between unlabeled features and labeled anchors: the "no CCM" ablation of CORN,
i.e. the correlation-aware mutual-learning baseline (CAML, Gao et al., MICCAI 2023, arXiv:2307.06312)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.methods.coral import MIN_ROWS

Similarity = Literal["cosine", "dot"]


def correlation_matrix(features: Tensor, selections: Mapping[int, Tensor], anchors: Mapping[int, Tensor],
                       temperature: float = 0.1, similarity: Similarity = "cosine") -> Tensor | None:
    """Row-wise ``softmax(sim(f, anchors) / temperature)`` over all anchors of all classes.

    Rows are the selected features of every pseudo-class with at least two rows (pseudo-class ascending);
    columns are the anchors of every class with at least two anchors (class ascending, concatenated).

    Args:
        features: (N, d) unlabeled features.
        selections: pseudo-class -> row indices.
        anchors: class -> (n_c, d) labeled features.
        temperature: softmax temperature (0.1).
        similarity: ``"cosine"`` (unit-normalised dot product) or ``"dot"`` (raw dot product).

    Returns:
        (n_rows, n_anchors) probabilities, or ``None`` when there are no rows or no anchors.
    """
    bank_parts = [anchors[a] for a in sorted(anchors) if anchors[a].shape[0] >= MIN_ROWS]
    row_parts = [features[selections[u]] for u in sorted(selections) if selections[u].numel() >= MIN_ROWS]
    if not bank_parts or not row_parts:
        return None
    rows = torch.cat(row_parts)
    bank = torch.cat(bank_parts).to(rows.dtype)
    if similarity == "cosine":
        rows = F.normalize(rows, dim=1)
        bank = F.normalize(bank, dim=1)
    return torch.softmax(rows @ bank.T / temperature, dim=1)


def correlation_consistency_loss(corr1: Tensor, corr2: Tensor, detach_target: bool = False,
                                 eps: float = 1e-8) -> Tensor:
    """``sum(-corr2 * log(corr1 + eps)) / n_rows``: branch 1's correlations against branch 2's as target
    (not detached by default, as in the reference code)."""
    target = corr2.detach() if detach_target else corr2
    return -(target * torch.log(corr1 + eps)).sum() / corr1.shape[0]


__all__ = ["Similarity", "correlation_consistency_loss", "correlation_matrix"]
