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

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

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
    anchor_source: Literal["pool", "batch"] = Field(
        "pool", description="pool: anchors from every labeled volume's slot (the dynamic feature pool); batch: "
        "only from this iteration's labeled volumes (the paper's 'without DFP' ablation)")


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

    def correlation_loss(self, f1: HeadOutputs, f2: HeadOutputs, pseudo: Tensor, conf: Tensor,
                         anchors: dict[int, Tensor]) -> tuple[Tensor | None, Tensor | int]:
        """Loss between the branches' unlabeled features ``f1``, ``f2`` (N rows of d, indexed on demand)
        given branch-1 ``pseudo``-labels and ``conf``-idences (N,); returns ``(loss or None, number of terms)``."""
        raise NotImplementedError

    @staticmethod
    def _rows(x: Tensor) -> Tensor:
        """(B, C, *spatial) -> (B * prod(spatial), C), voxel-major in (b, h, w, d) order."""
        return x.movedim(1, -1).reshape(-1, x.shape[1])

    @torch.no_grad()
    def update_pool(self, emb1: Tensor, emb2: Tensor, plan: StepPlan) -> None:
        """Store the projected features of the voxels both branches got right, one slot per labeled row.

        Only the rows a slot keeps are projected (heads in eval mode: batch norm is a per-row affine map,
        so a row's features do not depend on which other rows are projected with it).

        Args:
            emb1, emb2: (L, width, H, W, D) labeled embeddings of the two branches.
            plan: the step's voxel orders and host-side counts (:func:`plan_step`).
        """
        rows1, rows2 = self._rows(emb1), self._rows(emb2)
        n_vox = plan.pool_order.shape[1]
        with eval_mode(self.projection1, self.projection2):
            for b, key in enumerate(plan.keys):
                order = plan.pool_order[b] + b * n_vox

                def rows_of(index: Tensor, order: Tensor = order) -> Tensor:
                    voxels = order[index.to(order.device, non_blocking=True)]
                    return (self.projection1(rows1[voxels]) + self.projection2(rows2[voxels])) / 2

                self.pool.update_grouped(key, rows_of, plan.pool_counts[b])

    def training_step(self, batch: SemiBatch, iteration: int) -> StepOutput:
        check_batch(batch, need_unlabeled=True)
        lbs = batch.labeled_bs
        logits1, logits2, emb1, emb2 = self.net(batch.image)
        sup, cons, p1, p2 = self.base_losses(logits1, logits2, batch)
        conf1, pred1 = p1.detach().max(dim=1)
        pred2 = p2.detach().max(dim=1).indices  # = argmax (first maximum), without argmax's slow CPU kernel
        plan = plan_step(pred1, pred2, batch, self.config.network.n_classes)

        self.update_pool(emb1[:lbs], emb2[:lbs], plan)
        anchors = self.pool.sample_anchors(device=batch.image.device,
                                           keys=plan.keys if self.config.anchor_source == "batch" else None)

        corr: Tensor | None = None
        n_terms: Tensor | int = 0
        if plan.n_agree >= 2:  # batch norm in training mode needs two rows
            agree = plan.agree_order[:plan.n_agree]  # agreeing unlabeled voxels in voxel order
            f1 = head_outputs(self.prediction1, self.projection1(self._rows(emb1[lbs:])[agree]))
            f2 = head_outputs(self.prediction2, self.projection2(self._rows(emb2[lbs:])[agree]))
            corr, n_terms = self.correlation_loss(f1, f2, pred1[lbs:].reshape(-1)[agree],
                                                  conf1[lbs:].reshape(-1)[agree], anchors)
        if corr is None:  # skipped: a zero that still reaches every head parameter
            corr = touch_parameters(self.projection1, self.projection2, self.prediction1, self.prediction2)

        w_cons = self.ramp(iteration, self.config.cons_weight)
        w_corr = self.ramp(iteration, self.correlation_weight())
        loss = self.config.sup_weight * sup + w_cons * cons + w_corr * corr
        key = self.loss_key
        n_unlabeled = plan.agree_order.numel()
        logs: dict[str, float | Tensor] = {
                "loss": loss.detach(), "loss_sup": sup.detach(), "loss_cons": cons.detach(),
                f"loss_{key}": corr.detach(), "w_cons": w_cons, f"w_{key}": w_corr,
                f"{key}_terms": n_terms if isinstance(n_terms, Tensor) else float(n_terms),
                "agree_frac": plan.n_agree / max(n_unlabeled, 1),
                "anchor_classes": float(len(anchors)), "pool_bytes": float(self.pool.memory_bytes())}
        return StepOutput(loss, logs)


class HeadOutputs:
    """The prediction head's output rows, computed only for the rows asked for.

    The head's last layer is a row-wise ``Linear`` (no batch statistics after it), so ``f[index]`` =
    ``last(hidden[index])`` equals indexing the full output, values and gradients; the correlation
    losses read only the few selected rows (CORN: ``num_filtered`` of the ~10^5-10^6 agreeing voxels),
    and the full (N, d) output is never formed.
    """

    def __init__(self, hidden: Tensor, last: nn.Module) -> None:
        self.hidden = hidden  # (N, hidden) activations before the last layer
        self.last = last

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def __getitem__(self, index: Tensor) -> Tensor:
        """``index`` of any shape -> (*index.shape, d)."""
        return self.last(self.hidden[index])


def head_outputs(head: nn.Sequential, x: Tensor) -> HeadOutputs:
    """``head(x)`` (N, d) as :class:`HeadOutputs`: every layer but the last runs on all N rows (batch norm
    needs them), the last only on the rows that are read."""
    *trunk, last = list(head)
    for layer in trunk:
        x = layer(x)
    return HeadOutputs(x, last)


@dataclass
class StepPlan:
    """Voxel orders computed on the device and the few counts the host needs, read in one transfer.

    Attributes:
        agree_order: (U * V,) unlabeled voxel indices, the agreeing ones first (each group in voxel order).
        n_agree: number of agreeing unlabeled voxels.
        pool_order: (L, V) per labeled row, its voxels grouped by class (class 0 first), the voxels
            either branch got wrong last; voxel order inside each group.
        pool_counts: per labeled row, the C per-class counts of voxels both branches got right.
        keys: the labeled rows' dataset indices (feature-pool slot keys).
    """

    agree_order: Tensor
    n_agree: int
    pool_order: Tensor
    pool_counts: list[list[int]]
    keys: list[int]


def plan_step(pred1: Tensor, pred2: Tensor, batch: SemiBatch, n_classes: int) -> StepPlan:
    """Orders and counts of one pooled step with a single device-to-host read.

    Args:
        pred1, pred2: (B, *spatial) argmax predictions of the two branches.
        batch: the step's batch (labels and dataset indices of the first ``labeled_bs`` rows).
        n_classes: number of classes C.
    """
    lbs = batch.labeled_bs
    agree = agreement_mask(pred1[lbs:], pred2[lbs:]).reshape(-1)
    agree_order = torch.sort((~agree).to(torch.uint8), stable=True).indices
    label = batch.label[:lbs]
    key = torch.where(both_correct_mask(pred1[:lbs], pred2[:lbs], label), label,
                      torch.full_like(label, n_classes)).reshape(lbs, -1)
    pool_order = torch.sort(key, dim=1, stable=True).indices
    slot = key + (n_classes + 1) * torch.arange(lbs, device=key.device)[:, None]
    counts = torch.bincount(slot.reshape(-1), minlength=lbs * (n_classes + 1)).reshape(lbs, n_classes + 1)
    host = torch.cat([agree.sum().reshape(1), counts[:, :n_classes].reshape(-1),
                      batch.index[:lbs].to(counts.dtype)]).tolist()  # the step's one host read
    n_agree, per_class, keys = host[0], host[1:1 + lbs * n_classes], host[1 + lbs * n_classes:]
    return StepPlan(agree_order=agree_order, n_agree=n_agree, pool_order=pool_order,
                    pool_counts=[per_class[b * n_classes:(b + 1) * n_classes] for b in range(lbs)], keys=keys)


__all__ = ["MIB", "HeadOutputs", "PooledConfig", "PooledDualBranchMethod", "StepPlan", "head_outputs", "agreement_mask", "both_correct_mask",
           "plan_step"]
