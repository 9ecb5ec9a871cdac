"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017, arXiv:1703.01780): an EMA teacher's softmax on noisy unlabeled input is the
student's consistency target."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, cast

import torch
from pydantic import Field
from torch import Tensor, nn

from medssl.methods.base import (
    MethodConfig,
    NetworkConfig,
    SemiBatch,
    SemiMethod,
    StepOutput,
    check_batch,
    make_vnet,
)
from medssl.methods.ema import ema_alpha, ema_update, make_teacher
from medssl.methods.losses import ce_dice_loss, softmax_mse
from medssl.methods.ramps import ramp_weight
from medssl.methods.registry import register_method


class MeanTeacherConfig(MethodConfig):
    """Configuration of :class:`MeanTeacherMethod` (defaults: the reference code).

    The reference optimiser (SGD lr 0.01, x0.1 every 2 500 iterations, 6 000 iterations) belongs to the
    training preset, not to the method.
    """

    network: NetworkConfig = Field(default_factory=NetworkConfig)
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0)
    cons_weight: float = Field(0.1, ge=0.0, description="maximum consistency weight")
    rampup_length: float = Field(40.0, ge=0.0, description="ramp length in units of ramp_unit iterations")
    ramp_unit: int = Field(150, ge=1, description="iterations per ramp unit (150 published; 1 gives a "
                           "smooth ramp for short CPU runs)")
    noise_std: float = Field(0.1, ge=0.0, description="std of the teacher's Gaussian input noise")
    noise_clip: float = Field(0.2, ge=0.0, description="the noise is clamped to +-noise_clip")


@register_method("mean_teacher")
class MeanTeacherMethod(SemiMethod):
    """Student V-Net trained with ``0.5 (CE + Dice)`` on labeled rows plus ``w(t) * MSE(softmaxes)``
    against the EMA teacher on unlabeled rows; the teacher follows the student after each step with
    ``alpha = min(1 - 1/(step + 1), ema_decay)``.

    Both networks run in the method's mode (training mode during training, as in the reference, so the
    teacher's dropout is active). Ramps use the 0-based ``iteration`` like the reference.
    """

    config_class: ClassVar[type[MethodConfig]] = MeanTeacherConfig

    def __init__(self, config: MeanTeacherConfig | None = None) -> None:
        super().__init__()
        self.config = config or cast(MeanTeacherConfig, self.config_class())
        self.student = make_vnet(self.config.network)
        self.teacher = make_teacher(self.student)

    def noisy(self, x: Tensor) -> Tensor:
        """``x + clamp(N(0, noise_std^2), -noise_clip, noise_clip)`` (global torch RNG)."""
        noise = torch.randn_like(x) * self.config.noise_std
        return x + noise.clamp(-self.config.noise_clip, self.config.noise_clip)

    def _supervised(self, logits: Tensor, batch: SemiBatch) -> tuple[Tensor, dict[str, float | Tensor]]:
        lbs = batch.labeled_bs
        sup, ce, dice = ce_dice_loss(logits[:lbs], batch.label[:lbs])
        return sup, {"loss_sup": sup.detach(), "loss_ce": ce.detach(),
                     "loss_dice": dice.detach()}

    def training_step(self, batch: SemiBatch, iteration: int) -> StepOutput:
        check_batch(batch, need_unlabeled=True)
        lbs = batch.labeled_bs
        teacher_input = self.noisy(batch.image[lbs:])
        logits, _ = self.student(batch.image)
        with torch.no_grad():
            teacher_logits, _ = self.teacher(teacher_input)
        sup, logs = self._supervised(logits, batch)
        cons = softmax_mse(logits[lbs:], teacher_logits).mean()
        w = ramp_weight(iteration, self.config.cons_weight, self.config.rampup_length, self.config.ramp_unit)
        loss = sup + w * cons
        logs.update(loss=loss.detach(), loss_cons=cons.detach(), w_cons=w)
        return StepOutput(loss, logs)

    def after_optimizer_step(self, iteration: int) -> None:
        ema_update(self.teacher, self.student, ema_alpha(iteration, self.config.ema_decay))

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.student.parameters() if p.requires_grad)

    def segmentation_network(self) -> nn.Module:
        return self.student


__all__ = ["MeanTeacherConfig", "MeanTeacherMethod"]
