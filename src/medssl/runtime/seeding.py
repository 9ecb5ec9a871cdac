"""Seeding and random-number-generator state capture for exact resume.

The captured state holds only tensors, lists, ints, floats and None, so it survives
``torch.save`` followed by ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "seed_everything"]


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every CUDA device).

    Args:
        seed: integer in [0, 2**32).
        deterministic: also switch torch to deterministic algorithms (``warn_only=True``: an operation
            without a deterministic implementation warns instead of failing), disable cuDNN
            autotuning and configure cuBLAS for reproducible results.
    """
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS reads this when its handle is created; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def capture_rng_state() -> dict[str, Any]:
    """Snapshot the python, numpy, torch CPU and (when initialised) current CUDA device RNG states."""
    version, internal, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(list(internal), dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore a state returned by :func:`capture_rng_state` (possibly after a save/load round trip)."""
    py = state["python"]
    internal = tuple(int(v) for v in py["state"].tolist())
    random.setstate((int(py["version"]), internal, py["gauss_next"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"])))
    torch.set_rng_state(state["torch"].to(device="cpu", dtype=torch.uint8))
    cuda_state = state.get("cuda")
    if cuda_state is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_state.to(device="cpu", dtype=torch.uint8))
