"""Optional fast paths of a training process: cuDNN autotuning, channels-last memory format, and
``torch.compile`` of the networks, with a measured default per device.

Defaults (``"auto"``), from the measurements in ``benchmarks/results/``:

* CPU: channels-last off (measured slower: the SparK ResNet-18 step at 128² ran 1.19× slower with
  ``channels_last`` on this CPU's oneDNN kernels), compile off (not measured to pay on CPU; compiling a
  V-Net takes minutes there).
* CUDA: cuDNN autotuning (``cudnn.benchmark``) whenever the run is not deterministic; channels-last and
  compile stay off until ``benchmarks/gpu_check.sh`` has measured them on a GPU (it times both).

Compilation uses ``nn.Module.compile`` in place, so parameter names and checkpoints are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from medssl.config import RuntimeConfig

__all__ = ["FastPaths", "Toggle", "apply_fast_paths", "compile_networks", "configure_backends", "resolve_fast_paths",
           "to_channels_last"]

Toggle = Literal["auto", "on", "off"]

#: Per device type: (channels_last, compile) used for "auto".
_DEFAULTS: dict[str, tuple[bool, bool]] = {"cpu": (False, False), "cuda": (False, False)}


@dataclass(frozen=True)
class FastPaths:
    """The resolved choices for one process."""

    channels_last: bool
    compile: bool
    cudnn_benchmark: bool


def resolve_fast_paths(device: torch.device, deterministic: bool, channels_last: Toggle = "auto",
                       compile: Toggle = "auto") -> FastPaths:
    """Turn the ``"auto" / "on" / "off"`` settings into choices for ``device`` (see the module docstring)."""
    default_cl, default_compile = _DEFAULTS.get(device.type, (False, False))
    return FastPaths(channels_last=default_cl if channels_last == "auto" else channels_last == "on",
                     compile=default_compile if compile == "auto" else compile == "on",
                     cudnn_benchmark=device.type == "cuda" and not deterministic)


def configure_backends(paths: FastPaths) -> None:
    """Process-wide switches: cuDNN autotuning (only outside deterministic mode)."""
    if paths.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True


def to_channels_last(module: nn.Module) -> nn.Module:
    """``module`` with its 4-D / 5-D parameters in channels-last (2D) / channels-last-3d (3D) layout, in place.

    Convolutions then produce channels-last outputs, so the layout carries through the network without
    changing any value.
    """
    for param in module.parameters():
        if param.ndim == 5:
            param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
        elif param.ndim == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)
    return module


def compile_networks(module: nn.Module, backend: str = "inductor",
                     kinds: tuple[type[nn.Module], ...] | None = None) -> list[str]:
    """Compile, in place (``nn.Module.compile``), every network of ``kinds`` inside ``module`` (default:
    the V-Nets); returns the names compiled. Static shapes: a network sees one patch size in training."""
    if kinds is None:
        from medssl.models.vnet import DualBranchVNet, VNet

        kinds = (DualBranchVNet, VNet)
    names: list[str] = []
    for name, sub in module.named_modules():
        inside = any(done == "" or name.startswith(done + ".") for done in names)
        if isinstance(sub, kinds) and not inside:
            sub.compile(backend=backend, dynamic=False)
            names.append(name)
    return names


def apply_fast_paths(module: nn.Module, runtime: RuntimeConfig, device: torch.device,
                     compile_kinds: tuple[type[nn.Module], ...] | None = None) -> FastPaths:
    """Resolve the run's fast-path settings for ``device`` and apply them to ``module`` (in place) and the
    process; returns the choices (recorded by the caller). Values are unchanged by every path."""
    paths = resolve_fast_paths(device, runtime.deterministic, runtime.channels_last, runtime.compile)
    configure_backends(paths)
    if paths.channels_last:
        to_channels_last(module)
    if paths.compile:
        compile_networks(module, kinds=compile_kinds)
    return paths
