"""Loss-weight ramps (the sigmoid ramp-up of Laine & Aila, ICLR 2017, arXiv:1610.02242, as used by UA-MT and CORN (Li et al., IEEE BIBM 2024, arXiv:2410.15916))."""

from __future__ import annotations

import math

ITERATIONS_PER_RAMP_UNIT = 150


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = clip(current, 0, rampup_length) / rampup_length``.

    Rises from exp(-5) ~ 0.0067 at ``current = 0`` to 1 at ``current >= rampup_length``; a length of 0
    means no ramp (always 1).
    """
    if rampup_length <= 0:
        return 1.0
    t = min(max(float(current), 0.0), float(rampup_length)) / float(rampup_length)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def ramp_weight(iteration: int, max_weight: float, rampup_length: float,
                iterations_per_unit: int = ITERATIONS_PER_RAMP_UNIT) -> float:
    """``max_weight * sigmoid_rampup(iteration // iterations_per_unit, rampup_length)``.

    With the published 150 iterations per unit and length 40 the weight is full from iteration 6000.
    """
    return max_weight * sigmoid_rampup(iteration // iterations_per_unit, rampup_length)


__all__ = ["ITERATIONS_PER_RAMP_UNIT", "ramp_weight", "sigmoid_rampup"]
