"""Per-epoch means of the pretraining step logs (loss and mask ratios), reduced across processes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lightning.fabric import Fabric

__all__ = ["EpochMeans"]


class EpochMeans:
    """Running sums of the step logs of the current epoch (checkpointed, so a resumed epoch's means are
    those of an uninterrupted run). The loss sum stays on its device to avoid a sync per step."""

    KEYS = ("mask_ratio", "mask_ratio_roi", "mask_ratio_bg", "roi_patch_fraction")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum: Tensor | float = 0.0
        self.steps = 0
        self.sums = dict.fromkeys(self.KEYS, 0.0)
        self.counts = dict.fromkeys(self.KEYS, 0)

    def add(self, loss: Tensor, logs: dict[str, float]) -> None:
        self.loss_sum = self.loss_sum + loss.detach().double()
        self.steps += 1
        for key in self.KEYS:
            value = float(logs[key])
            if math.isfinite(value):
                self.sums[key] += value
                self.counts[key] += 1

    def means(self, fabric: Fabric) -> dict[str, float]:
        """Means over the epoch's steps (and processes); NaN for a value never defined."""
        loss = self.loss_sum.item() if isinstance(self.loss_sum, Tensor) else float(self.loss_sum)
        values = [loss, float(self.steps)] + [self.sums[k] for k in self.KEYS] + \
            [float(self.counts[k]) for k in self.KEYS]
        if fabric.world_size > 1:
            reduced = fabric.all_reduce(torch.tensor(values, dtype=torch.float64, device=fabric.device),
                                        reduce_op="sum")
            values = [float(v) for v in reduced.tolist()]
        k = len(self.KEYS)
        out = {"loss": values[0] / max(values[1], 1.0)}
        for key, total, count in zip(self.KEYS, values[2:2 + k], values[2 + k:], strict=True):
            out[key] = total / count if count else math.nan
        return out

    def state_dict(self) -> dict[str, Any]:
        loss = self.loss_sum.item() if isinstance(self.loss_sum, Tensor) else float(self.loss_sum)
        return {"loss_sum": loss, "steps": self.steps, "sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum = float(state["loss_sum"])
        self.steps = int(state["steps"])
        self.sums = {k: float(state["sums"][k]) for k in self.KEYS}
        self.counts = {k: int(state["counts"][k]) for k in self.KEYS}
