"""Cosine-correlation baseline: CORN's "no CCM" ablation, after correlation-aware mutual learning
(CAML, Gao et al., MICCAI 2023, arXiv:2307.06312; CORN: Li et al., IEEE BIBM 2024, arXiv:2410.15916).

The top ``num_filtered`` agreeing unlabeled voxels of each pseudo-class (by branch-1 confidence) are
compared with all pool anchors by cosine similarity; each row becomes ``softmax(sim / temperature)``
over the anchors, and branch 1's rows are trained towards branch 2's with a soft cross-entropy
(``sum(-c2 log(c1 + 1e-8)) / rows``). Everything else (two branches, sharpened-MSE consistency, feature
pool) is CORN's. The original mutual-learning code used raw dot products (``similarity="dot"``),
sharpening temperature 0.1 and 64-d embeddings; its cross-attention module is not part of this baseline.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import Tensor

from medssl.methods.base import MethodConfig
from medssl.methods.coral import select_per_class
from medssl.methods.correlation import Similarity, correlation_consistency_loss, correlation_matrix
from medssl.methods.pooled import PooledConfig, PooledDualBranchMethod
from medssl.methods.registry import register_method


class CamlConfig(PooledConfig):
    """Configuration of :class:`CamlMethod`."""

    corr_weight: float = Field(0.05, ge=0.0, description="maximum weight of the correlation loss")
    corr_temperature: float = Field(0.1, gt=0.0, description="softmax temperature of the similarities")
    similarity: Similarity = Field("cosine", description="cosine or dot")


@register_method("caml")
class CamlMethod(PooledDualBranchMethod):
    """Dual-branch V-Net + feature pool + cosine correlation consistency."""

    config_class: ClassVar[type[MethodConfig]] = CamlConfig
    config: CamlConfig
    loss_key: ClassVar[str] = "corr"

    def correlation_weight(self) -> float:
        return self.config.corr_weight

    def correlation_loss(self, f1: Tensor, f2: Tensor, pseudo: Tensor, conf: Tensor,
                         anchors: dict[int, Tensor]) -> tuple[Tensor | None, int]:
        cfg = self.config
        selections = select_per_class(pseudo, conf, cfg.network.n_classes, cfg.num_filtered, both_ends=False)
        c1 = correlation_matrix(f1, selections, anchors, cfg.corr_temperature, cfg.similarity)
        c2 = correlation_matrix(f2, selections, anchors, cfg.corr_temperature, cfg.similarity)
        if c1 is None or c2 is None:
            return None, 0
        return correlation_consistency_loss(c1, c2, detach_target=cfg.detach_target), int(c1.shape[0])


__all__ = ["CamlConfig", "CamlMethod"]
