"""Small helpers every layer shares: tensors to numpy, and an eval-mode context for modules.

Imports nothing from medssl and not torch at module level (metrics and ROI code use it on numpy input).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

__all__ = ["eval_mode", "to_numpy"]


def to_numpy(value: Any) -> np.ndarray:
    """``value`` as a numpy array: a torch tensor (any device; detached, bfloat16 widened to float32,
    which numpy lacks), a numpy array (as is) or anything ``np.asarray`` takes."""
    if hasattr(value, "detach"):
        value = value.detach()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.cpu().numpy()
    return np.asarray(value)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode for the block and restore each one's previous mode afterwards."""
    previous = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, was_training in zip(modules, previous, strict=True):
            m.train(was_training)
