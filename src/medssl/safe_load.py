"""Reading torch files safely: ``torch.load(weights_only=True)`` with one-line errors naming the file.

Shared by checkpoints (:mod:`medssl.runtime.checkpoint`) and exported encoders
(:mod:`medssl.models.encoder_io`); it depends on nothing else in medssl but the error type.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from medssl.errors import MedsslInputError

__all__ = ["load_checkpoint"]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        MedsslInputError: naming the file when it is missing, truncated, corrupt, holds arbitrary
            Python objects, or is not a dictionary.
    """
    path = Path(path)
    if not path.is_file():
        raise MedsslInputError(path, "checkpoint not found" if not path.exists() else "checkpoint is not a file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on bad files
        raise MedsslInputError(path, _describe_load_error(err)) from None
    if not isinstance(state, dict):
        raise MedsslInputError(path, f"not a medssl checkpoint (expected a dictionary, got {type(state).__name__})")
    return state


def _describe_load_error(err: Exception) -> str:
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (f"checkpoint holds Python objects ({found.group(1)}) besides tensors and plain containers; "
                "refusing to load it")
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = detail.group(1) if detail else (text.strip().splitlines() or [err.__class__.__name__])[0]
    return f"cannot read checkpoint, the file is truncated or corrupt ({reason.strip()[:160]})"
