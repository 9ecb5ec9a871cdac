"""Encoder weights files: read, validate, describe, and load into timm backbones, the V-Net encoder and
the ResNet body of Mask R-CNN. The one place that knows the file formats.

Formats read (all with ``torch.load(weights_only=True)``):

* ``medssl``: what medssl exports, self-describing —
  ``{"state_dict": {name: tensor}, "medssl_encoder": {"architecture", "in_chans", "dims", "target",
  "source_run", "source_checkpoint", "iteration", "commit", ...}}``. timm reads it as it is:
  ``timm.create_model(arch, num_classes=0, in_chans=..., checkpoint_path=file)`` takes the ``state_dict``
  key (``timm.models._helpers.load_state_dict``);
* ``encoder``: ``{"encoder": state_dict, ...}`` (older medssl exports and hand-made files);
* ``state_dict``: a plain ``{name: tensor}`` (timm / torchvision key names), e.g. from another toolkit.

Files without the ``medssl_encoder`` record take it from the JSON sidecar ``<file>.json`` when one exists
(exports before the record moved inside the file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from medssl.errors import MedsslInputError
from medssl.models.state_check import state_mismatches
from medssl.safe_load import load_checkpoint

__all__ = [
    "META_KEY",
    "EncoderFile",
    "ResnetBodyInit",
    "check_timm_fit",
    "encoder_metadata",
    "encoder_payload",
    "load_into_timm",
    "load_vnet_encoders",
    "read_encoder",
    "read_resnet_body_init",
    "timm_first_conv_key",
    "timm_in_chans",
]

#: Key of the description record inside a medssl export.
META_KEY = "medssl_encoder"
Layout = Literal["medssl", "encoder", "state_dict"]


@dataclass
class EncoderFile:
    """The tensors of an encoder file, how they were stored and what the file says about itself.

    Attributes:
        path: the file.
        state: parameter name -> tensor.
        layout: ``medssl`` (self-describing export), ``encoder`` (``{"encoder": ...}``) or ``state_dict``.
        meta: the ``medssl_encoder`` record (or the sidecar's content; empty when neither exists).
    """

    path: Path
    state: dict[str, Tensor]
    layout: Layout
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def in_chans(self) -> int | None:
        """Input channels recorded in the file (None for files that do not say)."""
        value = self.meta.get("in_chans")
        return int(value) if value is not None else None


def read_encoder(path: str | Path) -> EncoderFile:
    """Read an encoder file in any of the formats of this module.

    Raises:
        MedsslInputError: naming the file when it is unreadable, a training checkpoint, or holds something
            other than parameter names mapped to tensors.
    """
    path = Path(path)
    obj = load_checkpoint(path)
    meta: dict[str, Any] = {}
    layout: Layout = "state_dict"
    if isinstance(obj.get(META_KEY), dict) and isinstance(obj.get("state_dict"), dict):
        obj, meta, layout = obj["state_dict"], dict(obj[META_KEY]), "medssl"
    elif isinstance(obj.get("encoder"), dict):
        obj, layout = obj["encoder"], "encoder"
    elif "model" in obj and "format" in obj:
        raise MedsslInputError(path, "a training checkpoint, not an exported encoder (export the encoder "
                               "of a pretraining run first)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad or not obj:
        raise MedsslInputError(path, "not an encoder state dict (expected parameter names mapped to tensors, "
                               "or {'encoder': state_dict})")
    if not meta:
        meta = _sidecar(path)
    return EncoderFile(path=path, state=dict(obj), layout=layout, meta=meta)


def _sidecar(path: Path) -> dict[str, Any]:
    sidecar = path.with_name(path.name + ".json")
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    if data.get("in_chans") is not None and data.get("input_mode") == "replicate3":
        data = {**data, "in_chans": 3}  # the sidecar records the run's image channels, not the encoder's
    return data


def encoder_metadata(*, architecture: str, in_chans: int, dims: int, target: str,
                     source_run: str | None = None, source_checkpoint: str | None = None,
                     iteration: int | None = None, commit: Mapping[str, Any] | None = None,
                     **extra: Any) -> dict[str, Any]:
    """The ``medssl_encoder`` record of an export (plain values only, so ``weights_only`` loads it).

    Args:
        architecture: timm model name (2D) or ``vnet`` (3D).
        in_chans: input channels of the encoder's first convolution.
        dims: 2 or 3.
        target: the constructor the weights load into strictly, as Python text.
        source_run / source_checkpoint / iteration: where the weights come from.
        commit: the source run's git record (``{"commit": sha, "dirty": bool}``).
        extra: further plain values (e.g. ``vnet_width``, ``masking``, ``normalization``).
    """
    meta: dict[str, Any] = {"format_version": 1, "architecture": architecture, "in_chans": int(in_chans),
                            "dims": int(dims), "target": target, "source_run": source_run,
                            "source_checkpoint": source_checkpoint, "iteration": iteration,
                            "commit": dict(commit) if commit else None}
    meta.update(extra)
    return json.loads(json.dumps(meta, default=str))  # plain JSON types: paths become text, tuples lists


def encoder_payload(state: Mapping[str, Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a medssl export holds: ``{"state_dict": state, "medssl_encoder": meta}`` (see the module doc)."""
    return {"state_dict": {k: v.detach().cpu().contiguous() for k, v in state.items()}, META_KEY: dict(meta)}


# ------------------------------------------------------------------------------------ timm (2D)
def timm_first_conv_key(backbone: str) -> str:
    """State-dict key of the first convolution's weight of timm model ``backbone``."""
    import timm

    with torch.device("meta"):
        probe = timm.create_model(backbone, num_classes=0)
    return f"{probe.pretrained_cfg.get('first_conv', 'conv1')}.weight"


def timm_in_chans(state: Mapping[str, Tensor], backbone: str, path: str | Path) -> int:
    """Input channels of the timm ``backbone`` encoder in ``state``, read from its first convolution."""
    key = timm_first_conv_key(backbone)
    weight = state.get(key)
    if weight is None or weight.ndim < 3:
        raise MedsslInputError(path, f"does not fit timm {backbone!r}: no first convolution {key!r} "
                               "(an encoder of another architecture?)")
    return int(weight.shape[1])


def _classifier_prefix(model: nn.Module) -> str:
    return str(getattr(model, "pretrained_cfg", {}).get("classifier", "fc")) + "."


def check_timm_fit(model: nn.Module, state: Mapping[str, Tensor], backbone: str, path: str | Path
                   ) -> tuple[list[str], list[str], list[str]]:
    """(loaded, missing head keys, ignored head keys) of ``state`` in the timm ``model``, checked strictly.

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
    return sorted(body), sorted(k for k in expected if k.startswith(head)), ignored


def load_into_timm(model: nn.Module, state: Mapping[str, Tensor], backbone: str, path: str | Path
                   ) -> tuple[list[str], list[str], list[str]]:
    """Copy every weight but the classifier head's from ``state`` into ``model`` (see :func:`check_timm_fit`).

    A model on the meta device is only checked. Returns what :func:`check_timm_fit` returns.
    """
    keys = check_timm_fit(model, state, backbone, path)
    if not any(p.is_meta for p in model.parameters()):
        head = _classifier_prefix(model)
        result = model.load_state_dict({k: v for k, v in state.items() if not k.startswith(head)}, strict=False)
        assert not result.unexpected_keys and all(k.startswith(head) for k in result.missing_keys), result
    return keys


# ------------------------------------------------------------------------------------ V-Net (3D)
def load_vnet_encoders(encoders: Mapping[str, nn.Module], encoder: EncoderFile) -> dict[str, Any]:
    """Load ``encoder`` strictly into every V-Net encoder of ``encoders`` (name -> module).

    Returns:
        a report: ``path``, ``modules`` (the names loaded), ``tensors``.

    Raises:
        MedsslInputError: no encoder to load, or weights that do not fit one of them.
    """
    if not encoders:
        raise MedsslInputError(encoder.path, "the method has no V-Net encoder to initialise")
    for name, module in encoders.items():
        try:
            module.load_state_dict(encoder.state, strict=True)
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise MedsslInputError(encoder.path, f"encoder weights do not fit {name}: {first}") from None
    return {"path": str(encoder.path), "modules": list(encoders), "tensors": len(encoder.state)}


# ------------------------------------------------------------------------ Mask R-CNN ResNet body
@dataclass
class ResnetBodyInit:
    """A validated encoder for a torchvision ResNet body: its state dict, input channels, load report."""

    path: Path
    state: dict[str, Tensor]
    in_chans: int
    report: dict[str, Any]


def read_resnet_body_init(path: str | Path, backbone: str, in_chans: int | None = None) -> ResnetBodyInit:
    """Read an encoder file and check it fits the torchvision ResNet ``backbone`` body exactly.

    Every body tensor must be present with the body's shape; only ``fc.*`` may be absent and no other key
    may be left over. The body's input channels follow ``conv1.weight`` (1 or 3).

    Raises:
        MedsslInputError: one line naming the file: unreadable, not a state dict, or keys / shapes that do
            not fit ``backbone`` (with a hint at the architecture the file seems to hold).
    """
    from medssl.models.detector import guess_resnet, resnet_body

    encoder = read_encoder(path)
    path, state = encoder.path, encoder.state
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        raise MedsslInputError(path, f"not a ResNet encoder state dict (no 4D conv1.weight among {len(state)} tensors)")
    file_chans = int(conv1.shape[1])
    if file_chans not in (1, 3):
        raise MedsslInputError(path, f"conv1 takes {file_chans} input channels; medssl detection supports 1 or 3")
    if in_chans is not None and in_chans != file_chans:
        raise MedsslInputError(path, f"the encoder takes {file_chans} input channel(s) but model.in_chans is {in_chans}")
    expected = resnet_body(backbone, file_chans, "bn").state_dict()
    parts = state_mismatches(expected, state, optional_prefix="fc.")
    if parts:
        guess = guess_resnet(set(state))
        hint = f"; the file looks like a {guess} encoder" if guess and guess != backbone else ""
        raise MedsslInputError(path, f"encoder weights do not fit a {backbone} body: {'; '.join(parts)}{hint}")
    absent = [k for k in expected if k not in state]
    report = {"path": str(path), "backbone": backbone, "in_chans": file_chans,
              "loaded": sum(1 for k in expected if k in state), "missing": absent, "unexpected": []}
    return ResnetBodyInit(path=path, state={k: state[k] for k in expected if k in state}, in_chans=file_chans,
                          report=report)
