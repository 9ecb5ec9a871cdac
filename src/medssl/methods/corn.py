"""CORN: CORAL-correlation consistency with a dynamic feature pool (CORN (Li et al., IEEE BIBM 2024, arXiv:2410.15916): losses, CCM and DFP).

Loss ``0.5 L_s + w_c(t) L_c + w_d(t) L_d``. For the CCM term ``L_d``, the agreeing unlabeled voxels of
each pseudo-class are ranked by branch-1 confidence and the top and bottom ``num_filtered // 4`` are
kept; each branch forms the vector of CORAL distances between those features and the pool's anchors of
every class, ordered (u0,a0), (u0,a1), (u1,a0), (u1,a1); ``L_d`` is the cross-entropy of branch 1's
vector against branch 2's (target not detached), divided by the vector length.

``coral_variant="chunked"`` is an experiment, not the published method: the selected rows are cut into
chunks, each chunk's CORAL distances to the anchor classes become ``softmax(-D / chunk_temperature)``,
and each branch is trained towards the other's detached distribution.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor

from medssl.methods.base import MethodConfig
from medssl.methods.coral import (
    chunked_coral_loss,
    coral_chunk_logits,
    coral_consistency_loss,
    coral_vector,
    select_per_class,
)
from medssl.methods.pooled import PooledConfig, PooledDualBranchMethod
from medssl.methods.registry import register_method


class CornConfig(PooledConfig):
    """Configuration of :class:`CornMethod`. Defaults reproduce the reference code; the paper's
    variants are ``sup_loss="ce"``, ``cross_loss="cps"``, ``embed_dim=64``."""

    coral_weight: float = Field(0.05, ge=0.0, description="maximum weight of L_d")
    coral_variant: Literal["vector", "chunked"] = Field("vector", description="vector (published) or chunked "
                                                        "(experiment)")
    chunk_size: int = Field(256, ge=2, description="rows per chunk (chunked variant only)")
    chunk_temperature: float = Field(0.01, gt=0.0, description="temperature (chunked variant only)")


@register_method("corn")
class CornMethod(PooledDualBranchMethod):
    """CORN (branch 1 is the segmentation network at inference)."""

    config_class: ClassVar[type[MethodConfig]] = CornConfig
    config: CornConfig
    loss_key: ClassVar[str] = "coral"

    def correlation_weight(self) -> float:
        return self.config.coral_weight

    def correlation_loss(self, f1: Tensor, f2: Tensor, pseudo: Tensor, conf: Tensor,
                         anchors: dict[int, Tensor]) -> tuple[Tensor | None, int]:
        cfg = self.config
        selections = select_per_class(pseudo, conf, cfg.network.n_classes, cfg.num_filtered // 4, both_ends=True)
        if cfg.coral_variant == "chunked":
            l1 = coral_chunk_logits(f1, selections, anchors, cfg.chunk_size, cfg.chunk_temperature)
            l2 = coral_chunk_logits(f2, selections, anchors, cfg.chunk_size, cfg.chunk_temperature)
            if l1 is None or l2 is None:
                return None, 0
            return chunked_coral_loss(l1, l2), int(l1.numel())
        v1 = coral_vector(f1, selections, anchors)
        v2 = coral_vector(f2, selections, anchors)
        if v1 is None or v2 is None:
            return None, 0
        return coral_consistency_loss(v1, v2, detach_target=cfg.detach_target), int(v1.numel())


__all__ = ["CornConfig", "CornMethod"]
