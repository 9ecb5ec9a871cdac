"""Dual-branch methods with per-voxel heads and a dynamic feature pool (CCM and DFP of CORN (Li et al., IEEE BIBM 2024, arXiv:2410.15916)).

Shared by CORN (CORAL correlation) and its cosine-correlation ablation. Each step:

1. both branches segment the batch; ``L_s`` and ``L_c`` as in :class:`DualBranchMethod`;
2. pool update: for each labeled row, the voxels both branches predict correctly; their features are the
   mean of the two projection heads' outputs, computed with the heads in eval mode (batch norm uses its
   running statistics) and without gradient; they replace that volume's slot;
3. anchors are sampled from the pool;
4. unlabeled rows: voxels where the branches agree; pseudo-label and confidence from branch 1;
   features ``prediction_head_k(projection_head_k(emb_k))`` with gradient (heads in training mode);
5. the subclass turns features, pseudo-labels, confidences and anchors into the correlation loss
   (skipped, i.e. 0, when it cannot be formed).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from medssl.methods.base import SemiBatch, StepOutput, check_batch, eval_mode, touch_parameters
from medssl.methods.dual_branch import DualBranchConfig, DualBranchMethod
from medssl.methods.feature_pool import FeaturePool, Fusion
from medssl.models.heads import PredictionHead, ProjectionHead

MIB = 1024 * 1024


def agreement_mask(pred1: Tensor, pred2: Tensor) -> Tensor:
    """Voxels where both branches predict the same class: bool, same shape as the (B, *spatial) inputs."""
    return pred1 == pred2


def both_correct_mask(pred1: Tensor, pred2: Tensor, label: Tensor) -> Tensor:
    """Voxels where both branches predict the ground truth: bool (B, *spatial)."""
    return (pred1 == label) & (pred2 == label)


class PooledConfig(DualBranchConfig):
    """Settings shared by the pooled methods (defaults: the CORN reference code)."""

    embed_dim: int = Field(32, ge=1, description="projection/prediction embedding size (paper: 64)")
    n_labeled: int = Field(16, ge=1, description="labeled training volumes = feature-pool slots")
    pool_memory_mb: float = Field(256.0, gt=0.0, description="bound on the feature pool (MiB)")
    pool_fusion: Fusion = Field("replace", description="replace (code) or momentum")
    pool_momentum: float = Field(0.9, ge=0.0, le=1.0, description="old share kept by momentum fusion")
    anchors_per_half: int = Field(128, ge=1, description="anchors per class = 2 x this")
    num_filtered: int = Field(12800, ge=4, description="unlabeled rows kept per pseudo-class (budget)")
    detach_target: bool = Field(False, description="detach branch 2's target (the code does not)")


class PooledDualBranchMethod(DualBranchMethod):
    """Base of CORN and the correlation baseline; subclasses implement :meth:`correlation_loss`."""

    config: PooledConfig
    loss_key: ClassVar[str] = "corr"

    def __init__(self, config: PooledConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        width, dim = cfg.network.base_width, cfg.embed_dim
        self.projection1 = ProjectionHead(width, dim, dim)
        self.projection2 = ProjectionHead(width, dim, dim)
        self.prediction1 = PredictionHead(dim)
        self.prediction2 = PredictionHead(dim)
        self.pool = FeaturePool(cfg.n_labeled, dim, cfg.network.n_classes, int(cfg.pool_memory_mb * MIB),
                                fusion=cfg.pool_fusion, momentum=cfg.pool_momentum,
                                anchors_per_half=cfg.anchors_per_half)

    def correlation_weight(self) -> float:
        """Maximum weight of the correlation loss."""
        raise NotImplementedError

    def correlation_loss(self, f1: Tensor, f2: Tensor, pseudo: Tensor, conf: Tensor,
                         anchors: dict[int, Tensor]) -> tuple[Tensor | None, int]:
        """Loss between the branches' unlabeled features ``f1``, ``f2`` (N, d) given branch-1
        ``pseudo``-labels and ``conf``-idences (N,); returns ``(loss or None, number of terms)``."""
        raise NotImplementedError

    @staticmethod
    def _rows(x: Tensor) -> Tensor:
        """(B, C, *spatial) -> (B * prod(spatial), C), voxel-major in (b, h, w, d) order."""
        return x.movedim(1, -1).reshape(-1, x.shape[1])

    @torch.no_grad()
    def update_pool(self, emb1: Tensor, emb2: Tensor, pred1: Tensor, pred2: Tensor, label: Tensor,
                    index: Tensor) -> None:
        """Store the projected features of the voxels both branches got right, one slot per labeled row.

        Args:
            emb1, emb2: (L, width, H, W, D) labeled embeddings of the two branches.
            pred1, pred2: (L, H, W, D) argmax predictions.
            label: (L, H, W, D) ground truth.
            index: (L,) dataset indices (slot keys).
        """
        with eval_mode(self.projection1, self.projection2):
            for b, key in enumerate(index.tolist()):
                correct = both_correct_mask(pred1[b], pred2[b], label[b]).reshape(-1)
                e1 = self._rows(emb1[b:b + 1])[correct]
                e2 = self._rows(emb2[b:b + 1])[correct]
                if e1.shape[0]:
                    feats = (self.projection1(e1) + self.projection2(e2)) / 2
                else:
                    feats = e1.new_zeros((0, self.config.embed_dim))
                self.pool.update(key, feats, label[b].reshape(-1)[correct])

    def training_step(self, batch: SemiBatch, iteration: int) -> StepOutput:
        check_batch(batch, need_unlabeled=True)
        lbs = batch.labeled_bs
        logits1, logits2, emb1, emb2 = self.net(batch.image)
        sup, cons, p1, p2 = self.base_losses(logits1, logits2, batch)
        p1d, p2d = p1.detach(), p2.detach()
        conf1, pred1 = p1d.max(dim=1)
        pred2 = p2d.argmax(dim=1)

        self.update_pool(emb1[:lbs], emb2[:lbs], pred1[:lbs], pred2[:lbs], batch.label[:lbs], batch.index[:lbs])
        anchors = self.pool.sample_anchors(device=batch.image.device)

        agree = agreement_mask(pred1[lbs:], pred2[lbs:]).reshape(-1)
        n_agree = int(agree.sum())
        corr: Tensor | None = None
        n_terms = 0
        if n_agree >= 2:  # batch norm in training mode needs two rows
            f1 = self.prediction1(self.projection1(self._rows(emb1[lbs:])[agree]))
            f2 = self.prediction2(self.projection2(self._rows(emb2[lbs:])[agree]))
            corr, n_terms = self.correlation_loss(f1, f2, pred1[lbs:].reshape(-1)[agree],
                                                  conf1[lbs:].reshape(-1)[agree], anchors)
        if corr is None:  # skipped: a zero that still reaches every head parameter
            corr = touch_parameters(self.projection1, self.projection2, self.prediction1, self.prediction2)

        w_cons = self.ramp(iteration, self.config.cons_weight)
        w_corr = self.ramp(iteration, self.correlation_weight())
        loss = self.config.sup_weight * sup + w_cons * cons + w_corr * corr
        key = self.loss_key
        logs = {"loss": float(loss.detach()), "loss_sup": float(sup.detach()), "loss_cons": float(cons.detach()),
                f"loss_{key}": float(corr.detach()), "w_cons": w_cons, f"w_{key}": w_corr,
                f"{key}_terms": float(n_terms), "agree_frac": n_agree / max(agree.numel(), 1),
                "anchor_classes": float(len(anchors)), "pool_bytes": float(self.pool.memory_bytes())}
        return StepOutput(loss, logs)


__all__ = ["MIB", "PooledConfig", "PooledDualBranchMethod", "agreement_mask", "both_correct_mask"]
