"""A semi-supervised method defined outside medssl, in one file: the plugin the registry tests load.

A per-voxel linear classifier (a 1x1x1 convolution) trained with cross-entropy on the labeled rows plus
``weight`` times the mean prediction entropy of the unlabeled rows (entropy minimisation).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from medssl.methods import MethodConfig, SemiBatch, SemiMethod, StepOutput, register_method


class ToyConfig(MethodConfig):
    """Settings of :class:`ToyMethod`."""

    weight: float = Field(0.1, ge=0.0, description="weight of the unlabeled entropy term")
    n_classes: int = Field(2, ge=2)


class _VoxelNet(nn.Module):
    """(B, 1, *spatial) -> ((B, n_classes, *spatial),): the ``net(x)[0]`` convention of medssl methods."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.conv = nn.Conv3d(1, n_classes, kernel_size=1)

    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (self.conv(x),)


@register_method("toy")
class ToyMethod(SemiMethod):
    """Entropy minimisation with a voxel-wise linear classifier (a test plugin)."""

    config_class: ClassVar[type[MethodConfig]] = ToyConfig
    config: ToyConfig

    def __init__(self, config: ToyConfig | None = None) -> None:
        super().__init__()
        self.config = config or ToyConfig()
        self.net = _VoxelNet(self.config.n_classes)

    def training_step(self, batch: SemiBatch, iteration: int) -> StepOutput:
        logits = self.net(batch.image)[0]
        lb = batch.labeled_bs
        sup = nn.functional.cross_entropy(logits[:lb], batch.label[:lb])
        probs = torch.softmax(logits[lb:], dim=1)
        entropy = -(probs * torch.log(probs + 1e-8)).sum(dim=1).mean()
        loss = sup + self.config.weight * entropy
        return StepOutput(loss=loss, logs={"loss": float(loss.detach()), "loss_sup": float(sup.detach()),
                                           "loss_entropy": float(entropy.detach())})

    def segmentation_network(self) -> nn.Module:
        return self.net
