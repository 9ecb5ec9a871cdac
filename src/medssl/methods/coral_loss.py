"""CORN's CORAL-correlation consistency as one loss module, usable outside the CORN method.

CORN (Li et al., "Leveraging CORAL-Correlation Consistency Network for Semi-Supervised Left Atrium MRI
Segmentation", IEEE BIBM 2024, arXiv:2410.15916), CORAL-Correlation Consistency Module (CCM): per
pseudo-class, the most and least confident agreeing unlabeled features are compared with labeled anchors
of every class by the CORAL distance ``||cov(A) - cov(B)||_F^2 / (4 d^2)`` (Sun & Saenko, Deep CORAL,
ECCV 2016 workshops); the loss is the cross-entropy between the two branches' vectors of distances,
``-(1/P) sum(v2 * log_softmax(v1))`` (the authors' reference code; target not detached by default).
The anchors come from the Dynamic Feature Pool (DFP): pass a :class:`FeaturePool` or its sampled anchors.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from medssl.methods.coral import coral_consistency_loss, coral_vector, select_per_class
from medssl.methods.feature_pool import FeaturePool

__all__ = ["CoralConsistencyLoss"]


class CoralConsistencyLoss(nn.Module):
    """``L_d`` of CORN from two branches' features, pseudo-labels, confidences and anchors.

    Args:
        n_classes: segmentation classes (pseudo-labels and anchor classes lie in ``0..n_classes-1``).
        num_filtered: selection budget per pseudo-class: the ``num_filtered // 4`` most and least confident
            rows are kept (12 800 in the reference: 3 200 at each end).
        detach_target: detach branch 2's vector (the reference code does not).

    Example::

        loss_fn = CoralConsistencyLoss(n_classes=2)
        loss = loss_fn(f1, f2, pseudo, conf, pool)      # pool: a FeaturePool, or {class: (n_c, d) anchors}
    """

    def __init__(self, n_classes: int = 2, num_filtered: int = 12800, detach_target: bool = False) -> None:
        super().__init__()
        if num_filtered < 4:
            raise ValueError(f"num_filtered must be >= 4 (a quarter is kept at each end), got {num_filtered}")
        self.n_classes, self.num_filtered, self.detach_target = n_classes, num_filtered, detach_target

    def forward(self, features1: Tensor, features2: Tensor, pseudo: Tensor, confidence: Tensor,
                anchors: Mapping[int, Tensor] | FeaturePool) -> Tensor:
        """The loss (a scalar; 0 connected to both feature tensors when no CORAL pair can be formed).

        Args:
            features1, features2: (N, d) features of the same N agreeing unlabeled voxels, branch 1 / 2.
            pseudo: (N,) pseudo-labels (branch 1's argmax).
            confidence: (N,) branch 1's maximum probability, used for ranking.
            anchors: class -> (n_c, d) labeled features, or the feature pool to sample them from.
        """
        if isinstance(anchors, FeaturePool):
            anchors = anchors.sample_anchors(device=features1.device)
        selections = select_per_class(pseudo, confidence, self.n_classes, self.num_filtered // 4, both_ends=True)
        v1 = coral_vector(features1, selections, anchors)
        v2 = coral_vector(features2, selections, anchors)
        if v1 is None or v2 is None:
            return features1.sum() * 0.0 + features2.sum() * 0.0
        return coral_consistency_loss(v1, v2, detach_target=self.detach_target)

    def extra_repr(self) -> str:
        return f"n_classes={self.n_classes}, num_filtered={self.num_filtered}, detach_target={self.detach_target}"
