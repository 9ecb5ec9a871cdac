"""Supervised-only baseline: the V-Net trained on the labeled rows with ``0.5 (CE + Dice)``."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import nn

from medssl.methods.base import (
    MethodConfig,
    NetworkConfig,
    SemiBatch,
    SemiMethod,
    StepOutput,
    check_batch,
    make_vnet,
)
from medssl.methods.losses import ce_dice_loss
from medssl.methods.registry import register_method


class SupervisedConfig(MethodConfig):
    """Configuration of :class:`SupervisedMethod`."""

    network: NetworkConfig = Field(default_factory=NetworkConfig)


@register_method("supervised")
class SupervisedMethod(SemiMethod):
    """V-Net on the labeled part of each batch (unlabeled rows, if any, are not used)."""

    config_class: ClassVar[type[MethodConfig]] = SupervisedConfig
    needs_unlabeled: ClassVar[bool] = False

    def __init__(self, config: SupervisedConfig | None = None) -> None:
        super().__init__()
        self.config = config or SupervisedConfig()
        self.net = make_vnet(self.config.network)

    def training_step(self, batch: SemiBatch, iteration: int) -> StepOutput:
        check_batch(batch, need_unlabeled=False)
        lbs = batch.labeled_bs
        logits, _ = self.net(batch.image[:lbs])
        loss, ce, dice = ce_dice_loss(logits, batch.label[:lbs])
        return StepOutput(loss, {"loss": float(loss.detach()), "loss_sup": float(loss.detach()),
                                 "loss_ce": float(ce.detach()), "loss_dice": float(dice.detach())})

    def segmentation_network(self) -> nn.Module:
        return self.net


__all__ = ["SupervisedConfig", "SupervisedMethod"]
