"""Dual-branch baseline (MC-Net, Wu et al., MICCAI 2021, arXiv:2103.02911; CORN (Li et al., IEEE BIBM 2024, arXiv:2410.15916) without the CCM): two V-Nets with
different upsampling, a supervised loss on both and a cross-branch consistency on every row."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medssl.methods.base import (
    CrossLoss,
    MethodConfig,
    NetworkConfig,
    SemiBatch,
    SemiMethod,
    StepOutput,
    SupLoss,
    check_batch,
    make_dual_vnet,
)
from medssl.methods.losses import cross_pseudo_supervision, foreground_dice_loss, sharpened_mse_consistency
from medssl.methods.ramps import ramp_weight
from medssl.methods.registry import register_method


class DualBranchConfig(MethodConfig):
    """Configuration of :class:`DualBranchMethod` (defaults: the CORN reference code).

    The reference optimiser (SGD lr 0.01 constant, momentum 0.9, weight decay 1e-4, 15 000 iterations)
    belongs to the training preset, not to the method.
    """

    network: NetworkConfig = Field(default_factory=NetworkConfig)
    sup_loss: SupLoss = Field("dice", description="dice (code) or ce (paper)")
    cross_loss: CrossLoss = Field("mse_sharpen", description="mse_sharpen (code) or cps (paper)")
    sup_weight: float = Field(0.5, ge=0.0)
    temperature: float = Field(0.4, gt=0.0, description="sharpening temperature T")
    cons_weight: float = Field(1.0, ge=0.0, description="maximum weight of the cross-branch consistency")
    rampup_length: float = Field(40.0, ge=0.0, description="ramp length in units of ramp_unit iterations")
    ramp_unit: int = Field(150, ge=1, description="iterations per ramp unit (150 published; 1 gives a "
                           "smooth ramp for short CPU runs)")


@register_method("dual_branch")
class DualBranchMethod(SemiMethod):
    """Loss ``sup_weight * L_s + w_c(t) * L_c``.

    ``L_s = sum_k Dice(P_k[labeled])`` (or cross-entropy), ``L_c`` = sharpened-MSE in both directions
    (or cross pseudo supervision). The reference increments its iteration counter before computing the
    ramp, so the ramp uses ``iteration + 1``. Inference uses branch 1.
    """

    config_class: ClassVar[type[MethodConfig]] = DualBranchConfig
    config: DualBranchConfig

    def __init__(self, config: DualBranchConfig | None = None) -> None:
        super().__init__()
        self.config = config or self.config_class()
        self.net = make_dual_vnet(self.config.network)

    def ramp(self, iteration: int, max_weight: float) -> float:
        """Ramp weight at 0-based ``iteration`` (the reference's counter is ``iteration + 1``)."""
        return ramp_weight(iteration + 1, max_weight, self.config.rampup_length, self.config.ramp_unit)

    def supervised_loss(self, logits: tuple[Tensor, Tensor], probs: tuple[Tensor, Tensor],
                        label: Tensor) -> Tensor:
        """``L_s`` summed over both branches on the labeled rows (logits/probs already sliced)."""
        if self.config.sup_loss == "ce":
            return sum((F.cross_entropy(lg, label) for lg in logits), torch.zeros((), device=label.device))
        return sum((foreground_dice_loss(p, label, eps=1e-8) for p in probs), torch.zeros((), device=label.device))

    def cross_loss(self, logits1: Tensor, logits2: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
        """``L_c`` over every row of the batch."""
        if self.config.cross_loss == "cps":
            return cross_pseudo_supervision(logits1, logits2)
        return sharpened_mse_consistency(p1, p2, self.config.temperature)

    def base_losses(self, logits1: Tensor, logits2: Tensor, batch: SemiBatch
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(L_s, L_c, P_1, P_2)`` with ``P_k = softmax(logits_k)`` over the whole batch."""
        lbs = batch.labeled_bs
        p1, p2 = torch.softmax(logits1, dim=1), torch.softmax(logits2, dim=1)
        sup = self.supervised_loss((logits1[:lbs], logits2[:lbs]), (p1[:lbs], p2[:lbs]), batch.label[:lbs])
        return sup, self.cross_loss(logits1, logits2, p1, p2), p1, p2

    def training_step(self, batch: SemiBatch, iteration: int) -> StepOutput:
        check_batch(batch, need_unlabeled=True)
        logits1, logits2, _, _ = self.net(batch.image)
        sup, cons, _, _ = self.base_losses(logits1, logits2, batch)
        w_cons = self.ramp(iteration, self.config.cons_weight)
        loss = self.config.sup_weight * sup + w_cons * cons
        return StepOutput(loss, {"loss": float(loss.detach()), "loss_sup": float(sup.detach()),
                                 "loss_cons": float(cons.detach()), "w_cons": w_cons})

    def segmentation_network(self) -> nn.Module:
        return self.net.branch1


__all__ = ["DualBranchConfig", "DualBranchMethod"]
