"""2D image classifiers: a timm backbone with a new head, optionally initialised from a pretrained encoder.

An init file is an exported encoder (any format of :mod:`medssl.models.encoder_io`), loaded with
``weights_only``. It is checked strictly against the backbone: every weight except the
classifier head must be in the file with the same shape and every tensor of the file must belong to the
model; a head in the file is ignored (the head always starts from scratch). The first convolution of the
file decides the input channels (:func:`medssl.models.encoder_io.timm_in_chans`). Mismatches are reported as one line naming the
file, before any run directory exists (:func:`build_classifier` with ``meta=True`` checks shapes only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medssl.models.encoder_io import load_into_timm

__all__ = ["InitReport", "build_classifier"]


@dataclass
class InitReport:
    """What an init file contributed to the classifier."""

    path: str
    layout: str
    in_chans: int
    loaded: list[str]
    missing: list[str]
    ignored: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "layout": self.layout, "in_chans": self.in_chans, "tensors_loaded": len(self.loaded),
                "missing_keys": self.missing, "ignored_keys": self.ignored,
                "note": "loaded strictly except the classifier head, which starts from scratch"}


def build_classifier(backbone: str, num_classes: int, in_chans: int, drop_path: float = 0.0,
                     init: dict[str, Tensor] | None = None, init_path: str | Path = "init",
                     meta: bool = False) -> tuple[nn.Module, tuple[list[str], list[str], list[str]] | None]:
    """A timm classifier; with ``init``, every weight but the head's is copied from it (checked strictly).

    Args:
        meta: build on the meta device (shapes only; for validating an init file before a run).

    Returns:
        the model and, with ``init``, ``(loaded keys, head keys left at their fresh init, ignored keys)``.
    """
    import timm

    if meta:
        with torch.device("meta"):
            model = timm.create_model(backbone, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path)
    else:
        model = timm.create_model(backbone, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path)
    if init is None:
        return model, None
    return model, load_into_timm(model, init, backbone, init_path)
