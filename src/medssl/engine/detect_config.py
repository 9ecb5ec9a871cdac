"""Configuration of Mask R-CNN fine-tuning (``medssl finetune detect``) and the result it returns.

Schedule: SGD (momentum 0.9, weight decay 1e-4) with a linear warm-up and step decay at given epochs (the
mmdet "1x" schedule of the reference: 12 epochs, x0.1 at epochs 8 and 11, 500 warm-up iterations, lr 0.02
for 16 images per step). ``optim.lr`` is the rate for ``optim.lr_batch_size`` images per step and is scaled
linearly to the actual total batch (``data.batch_size`` x processes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medssl.config import MedsslConfig, RuntimeConfig
from medssl.data.detect import DetectDataConfig
from medssl.engine.loop import LoopResult

__all__ = ["DetectConfig", "DetectModelConfig", "DetectOptimConfig", "DetectResult"]


class DetectModelConfig(MedsslConfig):
    """Mask R-CNN on a ResNet + FPN (torchvision)."""

    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    trainable_layers: int = Field(3, ge=0, le=5, description="ResNet stages trained, counted from layer4 "
                                  "(3: layer2-4, the stem and layer1 stay frozen as in the reference; 5: all).")
    norm: Literal["frozen_bn", "bn"] = Field("frozen_bn", description="frozen_bn: batch norm with fixed "
                                             "statistics and affine (torchvision / mmdet default); bn: trained "
                                             "BatchNorm2d with batch statistics (for scratch training).")
    in_chans: Literal[1, 3] | None = Field(None, description="Input channels of the body (default: those of "
                                           "the init's conv1, 3 without an init: grayscale replicated).")
    min_size: int = Field(800, ge=16, description="Images are resized so the short side is min_size ...")
    max_size: int = Field(1333, ge=16, description="... unless the long side would exceed max_size (pixels).")
    anchor_sizes: tuple[int, int, int, int, int] = Field((32, 64, 128, 256, 512), description="RPN anchor "
                                                         "size (pixels) of FPN levels P2-P6.")
    image_mean: list[float] | None = Field(None, description="Per-channel mean of the [0, 1] images "
                                           "(default: measured on the training images).")
    image_std: list[float] | None = Field(None, description="Per-channel std (default: measured).")
    detections_per_image: int = Field(100, ge=1)
    rpn_proposals_train: int = Field(2000, ge=1, description="RPN proposals kept per image in training.")
    rpn_proposals_test: int = Field(1000, ge=1, description="RPN proposals kept per image at inference.")
    roi_batch_size: int = Field(512, ge=1, description="RoIs sampled per image for the box head in training.")
    fpn_channels: int = Field(256, ge=8, description="FPN width, also the width of the mask head's convolutions "
                              "(256 in the reference; smaller = faster on CPU).")
    box_head_dim: int = Field(1024, ge=8, description="Width of the box head's two fully connected layers.")

    @model_validator(mode="after")
    def _check_size(self) -> DetectModelConfig:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")
        return self


class DetectOptimConfig(MedsslConfig):
    """SGD with linear warm-up and step decay at epochs (the mmdet 1x schedule by default)."""

    lr: float = Field(0.02, gt=0, description="Learning rate for lr_batch_size images per step.")
    lr_batch_size: int = Field(16, ge=1, description="Total batch that lr refers to (linear scaling).")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_iterations: int = Field(500, ge=0)
    warmup_ratio: float = Field(0.001, gt=0, le=1, description="lr factor at the first warm-up iteration.")
    decay_epochs: list[float] = Field(default_factory=lambda: [8.0, 11.0],
                                      description="Epochs at which the lr is multiplied by gamma.")
    gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: float | None = Field(None, gt=0)

    @field_validator("decay_epochs")
    @classmethod
    def _sorted(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value) or list(value) != sorted(value):
            raise ValueError(f"expected increasing positive epochs, got {value}")
        return value


class DetectConfig(MedsslConfig):
    """Everything ``medssl finetune detect`` needs; presets live in ``configs/finetune/detect_*.yaml``."""

    runtime: RuntimeConfig
    data: DetectDataConfig
    model: DetectModelConfig = Field(default_factory=DetectModelConfig)
    optim: DetectOptimConfig = Field(default_factory=DetectOptimConfig)
    init: Path | None = Field(None, description="Exported 2D encoder (.pt); None trains from scratch.")
    epochs: float = Field(12, gt=0, description="Training length in epochs (see max_iterations).")
    max_iterations: int | None = Field(None, ge=1, description="Training length in iterations (overrides epochs).")
    validate_every: int | None = Field(None, ge=0, description="Iterations between validations "
                                       "(None: once per epoch, 0: never).")
    select_metric: Literal["box_ap", "mask_ap"] = Field("mask_ap", description="Metric that selects best.pt.")
    evaluate_after: bool = Field(True, description="Evaluate the final (and best) model on the validation images.")
    figures: int = Field(4, ge=0, description="Validation images drawn with predictions in figures/.")
    figure_score: float = Field(0.5, ge=0, le=1, description="Detections drawn from this score up.")


@dataclass
class DetectResult:
    """A finished detection run (``final`` / ``best``: validation metrics, None when not evaluated)."""

    run_dir: Path
    loop: LoopResult
    final: dict[str, float] | None
    best: dict[str, float] | None
    best_iteration: int | None
    init_report: dict[str, Any] | None
    files: dict[str, Path] = field(default_factory=dict)
    global_rank: int = 0
