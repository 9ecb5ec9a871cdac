"""Strict comparison of a state dict with the one a model expects, described in one line."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


def state_mismatches(expected: Mapping[str, Tensor], given: Mapping[str, Tensor],
                     optional_prefix: str | None = None) -> list[str]:
    """What keeps ``given`` from loading strictly where ``expected`` is wanted (empty = it fits).

    Args:
        expected: the target's state dict (names -> tensors; only shapes are compared).
        given: the tensors to load.
        optional_prefix: keys of ``expected`` starting with it may be absent (e.g. a classifier head ``"fc."``).

    Returns:
        Short phrases: missing keys, unexpected keys, shape mismatches (each with the first examples).
    """
    missing = [k for k in expected if k not in given and not (optional_prefix and k.startswith(optional_prefix))]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in given.items()
              if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) ({', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) ({', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) ({'; '.join(shapes[:2])})")
    return problems
