"""Uncertainty-aware Mean Teacher (Yu et al., MICCAI 2019, arXiv:1907.07034): the consistency is restricted to voxels
where the teacher is certain, measured by the entropy of T noisy teacher passes."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, field_validator
from torch import Tensor

from medssl.methods.base import MethodConfig, SemiBatch, StepOutput, check_batch
from medssl.methods.losses import LN2, entropy, softmax_mse
from medssl.methods.mean_teacher import MeanTeacherConfig, MeanTeacherMethod
from medssl.methods.ramps import ramp_weight, sigmoid_rampup
from medssl.methods.registry import register_method


class UAMTConfig(MeanTeacherConfig):
    """Configuration of :class:`UAMTMethod` (defaults: the reference code)."""

    uncertainty_passes: int = Field(8, ge=2, description="T noisy teacher passes (even)")
    max_iterations: int = Field(6000, ge=1, description="iterations over which the threshold ramps up")

    @field_validator("uncertainty_passes")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError("must be even (the passes run two at a time on a doubled batch)")
        return v


def uncertainty_threshold(iteration: int, max_iterations: int) -> float:
    """``(0.75 + 0.25 * sigmoid_rampup(iteration, max_iterations)) * ln 2`` nats."""
    return (0.75 + 0.25 * sigmoid_rampup(iteration, max_iterations)) * LN2


@register_method("ua_mt")
class UAMTMethod(MeanTeacherMethod):
    """Mean Teacher whose consistency ``sum(mask * (p_s - p_t)^2) / (2 sum(mask) + 1e-16)`` only counts
    voxels with teacher entropy below :func:`uncertainty_threshold`."""

    config_class: ClassVar[type[MethodConfig]] = UAMTConfig
    config: UAMTConfig

    @torch.no_grad()
    def teacher_uncertainty(self, unlabeled: Tensor) -> Tensor:
        """Entropy (nats) of the mean softmax of T noisy teacher passes: (U, 1, H, W, D).

        The passes run T/2 times on the unlabeled rows repeated twice, as in the reference.
        """
        passes = self.config.uncertainty_passes
        doubled = unlabeled.repeat(2, *([1] * (unlabeled.ndim - 1)))
        logits = torch.cat([self.teacher(self.noisy(doubled))[0] for _ in range(passes // 2)])
        probs = torch.softmax(logits, dim=1)
        probs = probs.reshape(passes, unlabeled.shape[0], *probs.shape[1:]).mean(dim=0)
        return entropy(probs)

    def training_step(self, batch: SemiBatch, iteration: int) -> StepOutput:
        check_batch(batch, need_unlabeled=True)
        lbs = batch.labeled_bs
        unlabeled = batch.image[lbs:]
        teacher_input = self.noisy(unlabeled)
        logits, _ = self.student(batch.image)
        with torch.no_grad():
            teacher_logits, _ = self.teacher(teacher_input)
        uncertainty = self.teacher_uncertainty(unlabeled)
        sup, logs = self._supervised(logits, batch)
        threshold = uncertainty_threshold(iteration, self.config.max_iterations)
        mask = (uncertainty < threshold).to(logits.dtype)
        dist = softmax_mse(logits[lbs:], teacher_logits)
        cons = (mask * dist).sum() / (2.0 * mask.sum() + 1e-16)
        w = ramp_weight(iteration, self.config.cons_weight, self.config.rampup_length, self.config.ramp_unit)
        loss = sup + w * cons
        logs.update(loss=float(loss.detach()), loss_cons=float(cons.detach()), w_cons=w,
                    threshold=threshold, certain_frac=float(mask.mean()))
        return StepOutput(loss, logs)


__all__ = ["UAMTConfig", "UAMTMethod", "uncertainty_threshold"]
