"""Lightning Fabric setup from a :class:`~medssl.config.RuntimeConfig`.

Multi-process strategies (``ddp``) re-run the current command line once per extra device
(Fabric's script launcher), so everything before :func:`setup_fabric` runs in every process and must
not write files; run-directory preparation happens afterwards on rank 0
(see :func:`medssl.runtime.session.start_run`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from medssl.config import RuntimeConfig
from medssl.errors import MedsslInputError

if TYPE_CHECKING:
    from lightning.fabric import Fabric

__all__ = ["describe_device", "resolve_accelerator", "setup_fabric"]


def resolve_accelerator(accelerator: str) -> str:
    """``"auto"`` becomes ``"cuda"`` when a CUDA device is available, else ``"cpu"``; ``"gpu"`` is ``"cuda"``."""
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "gpu":
        return "cuda"
    return accelerator


def _strategy(rt: RuntimeConfig, accelerator: str) -> Any:
    if rt.strategy == "auto":
        return "auto"
    from lightning.fabric.strategies import DDPStrategy

    kwargs: dict[str, Any] = {}
    if rt.strategy == "ddp_find_unused_parameters_true":
        kwargs["find_unused_parameters"] = True
    backend = "gloo" if accelerator == "cpu" else None
    return DDPStrategy(process_group_backend=backend, **kwargs)


def setup_fabric(rt: RuntimeConfig, launch: bool = True) -> Fabric:
    """Build (and by default launch) a Fabric for the runtime settings.

    CPU data parallelism uses the gloo backend. With ``launch=True`` the extra processes of a
    multi-device strategy are started before this returns.

    Raises:
        MedsslInputError: the settings are not usable on this machine (e.g. ``cuda`` without a GPU,
            a precision the device does not support).
    """
    from lightning.fabric import Fabric

    accelerator = resolve_accelerator(rt.accelerator)
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise MedsslInputError("runtime.accelerator", "'cuda' requested but no CUDA device is available")
    try:
        fabric = Fabric(accelerator=accelerator, strategy=_strategy(rt, accelerator), devices=rt.devices,
                        num_nodes=rt.num_nodes, precision=rt.precision)
    except (ValueError, RuntimeError, TypeError) as err:
        reason = (str(err).strip().splitlines() or [err.__class__.__name__])[0]
        raise MedsslInputError("runtime settings", f"cannot set up devices: {reason}") from None
    if launch:
        fabric.launch()
    return fabric


def describe_device(fabric: Fabric) -> str:
    """One line naming the device type (and GPU model), the process count, strategy and precision."""
    device = fabric.device
    if device.type == "cuda":
        name = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        name = device.type
    strategy = type(fabric.strategy).__name__
    backend = getattr(fabric.strategy, "_process_group_backend", None)
    if backend:
        strategy += f"/{backend}"
    precision = getattr(fabric.strategy.precision, "precision", None)
    parts = [name, f"{fabric.world_size} process{'es' if fabric.world_size != 1 else ''}", strategy]
    if precision is not None:
        parts.append(f"precision {precision}")
    return ", ".join(parts)
