"""Exponential-moving-average teachers (Mean Teacher, Tarvainen & Valpola, NeurIPS 2017, arXiv:1703.01780)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_alpha(step: int, decay: float = 0.99) -> float:
    """``min(1 - 1 / (step + 1), decay)``: 0 at step 0 (the teacher copies the student), then ``decay``."""
    return min(1.0 - 1.0 / (step + 1), decay)


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy of ``student`` (its parameters never receive gradients)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """``teacher_param <- alpha * teacher_param + (1 - alpha) * student_param`` for every parameter.

    Buffers (batch-norm running statistics) are not averaged; the teacher keeps its own, as in the
    mean-teacher reference code.
    """
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)


__all__ = ["ema_alpha", "ema_update", "make_teacher"]
