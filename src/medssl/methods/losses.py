"""Loss terms shared by the semi-supervised methods.

Probabilities are softmax outputs of shape (B, C, *spatial); labels are (B, *spatial) class indices.
Every function works for any number of spatial dimensions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LN2 = math.log(2.0)


def binary_dice_loss(prob: Tensor, target: Tensor, eps: float = 1e-8, squared: bool = False) -> Tensor:
    """``1 - (2 sum(p g) + eps) / (sum(p) + sum(g) + eps)`` over all elements.

    Args:
        prob: foreground probabilities, any shape.
        target: binary ground truth (bool or 0/1), same shape.
        eps: smoothing term (1e-8 in the dual-branch reference code, 1e-5 in the mean-teacher code).
        squared: use ``sum(p^2) + sum(g^2)`` in the denominator (the mean-teacher reference's Dice).
    """
    g = target.to(prob.dtype)
    inter = (prob * g).sum()
    denom = (prob * prob).sum() + (g * g).sum() if squared else prob.sum() + g.sum()
    return 1.0 - (2.0 * inter + eps) / (denom + eps)


def foreground_dice_loss(probs: Tensor, label: Tensor, eps: float = 1e-8, squared: bool = False) -> Tensor:
    """Mean of :func:`binary_dice_loss` over the foreground classes 1..C-1 (class 1 alone when C = 2).

    Args:
        probs: (B, C, *spatial) probabilities.
        label: (B, *spatial) class indices.
    """
    losses = [binary_dice_loss(probs[:, c], label == c, eps, squared) for c in range(1, probs.shape[1])]
    return torch.stack(losses).mean()


def ce_dice_loss(logits: Tensor, label: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The supervised loss of the V-Net and mean-teacher baselines: ``0.5 (CE + Dice)``.

    Dice is the squared-denominator form with eps 1e-5 used by those baselines.

    Returns:
        (loss, ce, dice) scalars.
    """
    ce = F.cross_entropy(logits, label)
    dice = foreground_dice_loss(torch.softmax(logits, dim=1), label, eps=1e-5, squared=True)
    return 0.5 * (ce + dice), ce, dice


def sharpen(p: Tensor, temperature: float) -> Tensor:
    """Elementwise ``p^(1/T) / (p^(1/T) + (1 - p)^(1/T))`` (T < 1 pushes probabilities to 0 or 1)."""
    inv = 1.0 / temperature
    a = p.pow(inv)
    return a / (a + (1.0 - p).pow(inv))


def sharpened_mse_consistency(p1: Tensor, p2: Tensor, temperature: float) -> Tensor:
    """Cross-branch consistency ``mean((p1 - sharpen(p2))^2) + mean((p2 - sharpen(p1))^2)``.

    The sharpened targets are not detached (as in the reference code).
    """
    return ((p1 - sharpen(p2, temperature)) ** 2).mean() + ((p2 - sharpen(p1, temperature)) ** 2).mean()


def cross_pseudo_supervision(logits1: Tensor, logits2: Tensor) -> Tensor:
    """Each branch's hard argmax supervises the other with cross-entropy: ``CE(l1, argmax l2) + CE(l2, argmax l1)``."""
    return F.cross_entropy(logits1, logits2.argmax(1).detach()) + F.cross_entropy(logits2, logits1.argmax(1).detach())


def softmax_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Elementwise ``(softmax(student) - softmax(teacher))^2`` over the class axis 1 (no reduction)."""
    return (torch.softmax(student_logits, dim=1) - torch.softmax(teacher_logits, dim=1)) ** 2


def entropy(probs: Tensor, eps: float = 1e-6) -> Tensor:
    """Predictive entropy ``-sum_c p log(p + eps)`` in nats over axis 1, keeping it: (B, 1, *spatial)."""
    return -(probs * torch.log(probs + eps)).sum(dim=1, keepdim=True)


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """``-sum(target * log_softmax(logits))`` over the last axis, summed over leading axes."""
    return -(target * torch.log_softmax(logits, dim=-1)).sum()


__all__ = ["LN2", "binary_dice_loss", "ce_dice_loss", "cross_pseudo_supervision", "entropy",
           "foreground_dice_loss", "sharpen", "sharpened_mse_consistency", "soft_cross_entropy", "softmax_mse"]
