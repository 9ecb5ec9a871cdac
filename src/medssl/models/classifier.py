"""2D image classifiers: a timm backbone with a new head, optionally initialised from a pretrained encoder.

An init file is an exported encoder (a plain timm state dict, or ``{"encoder": state_dict, ...}``),
loaded with ``weights_only``. It is checked strictly against the backbone: every weight except the
classifier head must be in the file with the same shape and every tensor of the file must belong to the
model; a head in the file is ignored (the head always starts from scratch). The first convolution of the
file decides the input channels (:func:`init_in_chans`). Mismatches are reported as one line naming the
file, before any run directory exists (:func:`build_classifier` with ``meta=True`` checks shapes only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from medssl.config import MedsslConfig
from medssl.errors import MedsslInputError
from medssl.models.state_check import state_mismatches

__all__ = [
    "ClassifyModelConfig",
    "InitReport",
    "build_classifier",
    "check_encoder_fits",
    "init_in_chans",
    "read_encoder_state",
]


class ClassifyModelConfig(MedsslConfig):
    """The timm backbone and its input."""

    backbone: str = Field("resnet50", description="timm model name (e.g. resnet18, resnet50).")
    in_chans: int | None = Field(None, ge=1, description="Input channels; None: the init file's first "
                                 "convolution, else the images' own (see replicate3).")
    replicate3: bool = Field(False, description="Without in_chans and init file: feed grayscale images as "
                             "3 identical channels (the reference) instead of 1.")
    image_size: int = Field(224, ge=16, description="Training and evaluation size in pixels (square).")
    drop_path: float = Field(0.05, ge=0, lt=1, description="Stochastic depth rate.")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        import timm

        if not timm.is_model(value):
            raise ValueError(f"unknown timm model {value!r} (see timm.list_models())")
        return value


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


def read_encoder_state(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """The tensors of an exported encoder file and its layout (``state_dict`` or ``encoder``).

    Accepts a plain timm state dict or ``{"encoder": state_dict, ...}``; loads with ``weights_only``.

    Raises:
        MedsslInputError: naming the file when it is unreadable or holds something else.
    """
    from medssl.runtime.checkpoint import load_checkpoint

    obj = load_checkpoint(path)
    layout = "state_dict"
    if isinstance(obj.get("encoder"), dict):
        obj, layout = obj["encoder"], "encoder"
    elif "model" in obj and "format" in obj:
        raise MedsslInputError(path, "a training checkpoint, not an exported encoder (export the encoder "
                               "of a pretraining run first)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad or not obj:
        raise MedsslInputError(path, "not an encoder state dict (expected parameter names mapped to tensors, "
                               "or {'encoder': state_dict})")
    return dict(obj), layout


def _first_conv_key(backbone: str) -> str:
    import timm

    with torch.device("meta"):
        probe = timm.create_model(backbone, num_classes=0)
    config = cast(dict[str, Any], probe.pretrained_cfg)
    return f"{config.get('first_conv', 'conv1')}.weight"


def init_in_chans(state: dict[str, Tensor], backbone: str, path: str | Path) -> int:
    """Input channels of the encoder in ``state``, read from the first convolution's weight."""
    key = _first_conv_key(backbone)
    weight = state.get(key)
    if weight is None or weight.ndim < 3:
        raise MedsslInputError(path, f"does not fit timm {backbone!r}: no first convolution {key!r} "
                               "(an encoder of another architecture?)")
    return int(weight.shape[1])


def _classifier_prefix(model: nn.Module) -> str:
    name = str(getattr(model, "pretrained_cfg", {}).get("classifier", "fc"))
    return name + "."


def check_encoder_fits(model: nn.Module, state: dict[str, Tensor], backbone: str, path: str | Path
                       ) -> tuple[list[str], list[str], list[str]]:
    """(loaded, missing head keys, ignored head keys) of ``state`` in ``model``, checked strictly.

    Every model key except the classifier head must be in ``state`` with the same shape, and every key
    of ``state`` must belong to the model; classifier keys in the file are ignored (the head is new).

    Raises:
        MedsslInputError: naming the file, the first mismatches and the backbone.
    """
    head = _classifier_prefix(model)
    expected = model.state_dict()
    ignored = sorted(k for k in state if k.startswith(head))
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    problems = state_mismatches(expected, body, optional_prefix=head)
    if problems:
        raise MedsslInputError(path, f"encoder weights do not fit timm {backbone!r}: " + ", ".join(problems))
    head_keys = sorted(k for k in expected if k.startswith(head))
    return sorted(body), head_keys, ignored


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
    keys = check_encoder_fits(model, init, backbone, init_path)
    if not meta:
        head = _classifier_prefix(model)
        result = model.load_state_dict({k: v for k, v in init.items() if not k.startswith(head)}, strict=False)
        assert not result.unexpected_keys and all(k.startswith(head) for k in result.missing_keys), result
    return model, keys
