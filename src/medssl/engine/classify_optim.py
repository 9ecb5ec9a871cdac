"""Optimisation of classification fine-tuning: layer-wise lr decay, LAMB / AdamW and the lr schedule.

The reference recipe of SparK / Mask What Matters for ResNet-50 (the schema defaults):

* optimiser LAMB (or AdamW); peak learning rate ``base_lr * global_batch / 256``
  (:func:`medssl.engine.schedules.peak_lr`); weight decay on weights only (no decay on biases and other
  1-D parameters);
* learning rate: linear warm-up from ``warmup_start`` x peak, then cosine decay to ``final_lr_ratio`` x
  peak at the last iteration (:func:`lr_multiplier`, the schedule of :mod:`medssl.engine.schedules`);
* layer-wise learning-rate decay: parameter group ``i`` of ``0..N+1`` gets ``layer_decay ** (N + 1 - i)``
  times the peak lr (the classifier head, group ``N + 1``, the full lr). ResNets are grouped as in the
  reference: stem (``conv1``, ``bn1``) = 0; ``layer1`` = 1; ``layer2`` in chunks of ``b2`` blocks and
  ``layer3`` in chunks of ``b3`` blocks (the reference's table: ResNet-50/101 b2 = 2, b3 = 3; ResNet-152
  and -200 b2 = b3 = 4; other depths split ``layer2`` and ``layer3`` in two halves each, which for
  ResNet-18/34/50 gives the same 8 groups); ``layer4`` = N; ``fc`` = N + 1. Other timm backbones
  use timm's own layer grouping (``group_matcher``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from medssl.config import MedsslConfig
from medssl.engine.schedules import WARMUP_START_RATIO, build_lamb, lr_factor

__all__ = [
    "ClassifyOptimConfig",
    "build_optimizer",
    "layer_decay_param_groups",
    "lr_multiplier",
    "resnet_layer_ids",
]


class ClassifyOptimConfig(MedsslConfig):
    """Optimiser, schedule and regularisation (defaults: the reference recipe for ResNet-50)."""

    name: Literal["lamb", "adamw"] = "lamb"
    base_lr: float = Field(0.002, ge=0, description="Peak learning rate per 256 images of global batch.")
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.02, ge=0, description="On weights only (not biases / 1-D parameters).")
    layer_decay: float = Field(0.7, gt=0, le=1, description="Layer-wise lr decay (1: off).")
    warmup_epochs: float = Field(5, ge=0)
    warmup_start: float = Field(WARMUP_START_RATIO, ge=0, le=1, description="First warm-up lr as a fraction of the peak.")
    final_lr_ratio: float = Field(0.001, ge=0, le=1, description="Cosine floor as a fraction of the peak.")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    loss: Literal["ce", "bce"] = Field("bce", description="ce: softmax cross-entropy on soft targets; "
                                       "bce: per-class binary cross-entropy (scores are sigmoids).")
    mixup: float = Field(0.1, ge=0, description="Mixup alpha (0: off).")
    cutmix: float = Field(1.0, ge=0, description="CutMix alpha (0: off).")
    mix_prob: float = Field(1.0, ge=0, le=1, description="Probability of mixing a batch.")
    mix_switch_prob: float = Field(0.5, ge=0, le=1, description="Probability of cutmix over mixup.")
    ema_decay: float | None = Field(0.9999, gt=0, lt=1, description="EMA of the weights (None: off).")
    grad_clip: float | None = Field(None, gt=0)

    @property
    def mixing(self) -> bool:
        """Whether mixup or cutmix is on."""
        return self.mix_prob > 0 and (self.mixup > 0 or self.cutmix > 0)


#: (blocks in layer2, blocks in layer3) -> (layer2 chunk, layer3 chunk): the reference's table.
_RESNET_CHUNKS = {(4, 6): (2, 3), (4, 23): (2, 3), (8, 36): (4, 4), (24, 36): (4, 4), (30, 48): (5, 6)}


def resnet_layer_ids(model: nn.Module) -> tuple[Callable[[str], int], int]:
    """``(layer_id(name), N)`` for a timm ResNet: ids ``0..N+1`` as described in the module notes."""
    l2, l3 = len(model.layer2), len(model.layer3)  # type: ignore[arg-type]
    b2, b3 = _RESNET_CHUNKS.get((l2, l3), (max(1, math.ceil(l2 / 2)), max(1, math.ceil(l3 / 2))))
    n2, n3 = math.ceil(l2 / b2), math.ceil(l3 / b3)
    n = 2 + n2 + n3

    def layer_id(name: str) -> int:
        top = name.split(".")[0]
        if top == "layer1":
            return 1
        if top == "layer2":
            return 2 + int(name.split(".")[1]) // b2
        if top == "layer3":
            return 2 + n2 + int(name.split(".")[1]) // b3
        if top == "layer4":
            return n
        if top == "fc":
            return n + 1
        return 0

    return layer_id, n


def _no_decay(name: str, param: Tensor) -> bool:
    return param.ndim <= 1 or name.endswith(".bias")


def layer_decay_param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float
                             ) -> list[dict[str, Any]]:
    """Parameter groups with layer-wise lr decay: each group has ``lr`` (already scaled), ``lr_scale``,
    ``weight_decay`` (0 for biases and 1-D parameters) and ``layer_id``.

    ResNets follow :func:`resnet_layer_ids`; other timm models use timm's layer grouping. Groups are
    ordered from the head down, so group 0 has the full learning rate (the ``lr`` that
    ``metrics.csv`` logs).
    """
    from timm.models.resnet import ResNet

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(model, ResNet):
        layer_id, n = resnet_layer_ids(model)
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, p in params:
            lid, nd = layer_id(name), _no_decay(name, p)
            scale = layer_decay ** (n + 1 - lid)
            g = groups.setdefault((lid, nd), {"params": [], "lr_scale": scale, "layer_id": lid,
                                              "weight_decay": 0.0 if nd else weight_decay, "lr": lr * scale})
            g["params"].append(p)
        return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], k[1]))]
    from timm.optim import param_groups_layer_decay

    out = []
    for g in param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay):
        scale = float(g.get("lr_scale", 1.0))
        out.append({"params": g["params"], "lr_scale": scale, "layer_id": -1,
                    "weight_decay": float(g["weight_decay"]), "lr": lr * scale})
    return sorted(out, key=lambda g: -g["lr_scale"])


def build_optimizer(model: nn.Module, cfg: ClassifyOptimConfig, peak_lr: float) -> torch.optim.Optimizer:
    """LAMB (as in the reference: no bias correction, trust ratio on every group, no internal clipping)
    or AdamW over :func:`layer_decay_param_groups`."""
    groups = layer_decay_param_groups(model, peak_lr, cfg.weight_decay, cfg.layer_decay)
    if cfg.name == "lamb":
        return build_lamb(groups, peak_lr, cfg.betas, bias_correction=False, always_adapt=True)
    return torch.optim.AdamW(groups, lr=peak_lr, betas=cfg.betas, weight_decay=0.0)


def lr_multiplier(iteration: int, total: int, warmup: int, start: float, floor: float) -> float:
    """Learning rate of step ``iteration`` (0-based) as a fraction of the peak.

    :func:`medssl.engine.schedules.lr_factor` with ``last_at_floor``: linear warm-up
    ``start + (1 - start) * i / warmup`` for ``i < warmup``, then cosine
    ``floor + (1 - floor) * (1 + cos(pi * r)) / 2`` with ``r = (i - warmup) / (total - 1 - warmup)``
    (clamped to [0, 1]), so the last step sits at ``floor``.
    """
    return lr_factor(iteration, total, warmup, floor, start, last_at_floor=True)
