"""Counting the points where a computation waits for the device: tensor -> Python reads.

On a GPU, reading a value back to the host (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``) or
running an operation whose output size depends on the data (``nonzero``, boolean-mask indexing,
``masked_select``, ``unique``) stalls the host until the device has caught up; a training step with
such reads cannot queue the next step's kernels ahead. :func:`count_host_reads` records them inside a
block, on any device:

* every ATen operation of that kind, seen by a ``TorchDispatchMode`` (boolean-mask indexing reaches
  the dispatcher as ``nonzero``; ``item`` / ``float`` / ``int`` / ``bool`` as ``_local_scalar_dense``);
* ``Tensor.tolist`` and ``Tensor.numpy``, which read memory without going through the dispatcher;
* on CUDA, additionally what ``torch.cuda.set_sync_debug_mode("warn")`` reports.

On a CPU nothing actually waits, so the count is a proxy: the same code on a GPU would synchronise
at exactly these points.
"""

from __future__ import annotations

import contextlib
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HOST_READ_OPS", "MASK_INDEX_OPS", "HostReads", "count_host_reads"]

#: ATen operations (overload packet names) that read device data back to the host.
HOST_READ_OPS: frozenset[str] = frozenset({
    "_local_scalar_dense", "item", "nonzero", "nonzero_static_unchecked", "masked_select", "equal", "is_nonzero",
    "_unique", "_unique2", "unique_dim", "unique_consecutive", "allclose",
})
#: Indexing operations that synchronise when an index is a boolean mask (boolean-mask indexing).
MASK_INDEX_OPS: frozenset[str] = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})


@dataclass
class HostReads:
    """What :func:`count_host_reads` recorded: one ``"<operation> at <file>:<line>"`` entry per read."""

    events: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events)

    def record(self, what: str) -> None:
        self.events.append(f"{what} at {_caller()}")


def _caller() -> str:
    """The innermost frame outside torch and this module (where the read was asked for)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = frame.filename.replace("\\", "/")
        if "/torch/" not in name and frame.filename != __file__:
            return f"{name.rsplit('/', 2)[-1] if '/' in name else name}:{frame.lineno}"
    return "?"


class _ReadMode(TorchDispatchMode):
    def __init__(self, reads: HostReads) -> None:
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name in HOST_READ_OPS:
            self.reads.record(name)
        elif name in MASK_INDEX_OPS and _has_mask(args):
            self.reads.record(f"{name} with a boolean mask")
        elif name == "repeat_interleave" and (kwargs or {}).get("output_size") is None and len(args) < 4:
            self.reads.record("repeat_interleave without output_size")
        return func(*args, **(kwargs or {}))


def _has_mask(args: Any) -> bool:
    """Whether an indexing call's index list holds a boolean (or uint8) mask, whose size is data-dependent."""
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


@contextlib.contextmanager
def count_host_reads() -> Iterator[HostReads]:
    """Record every tensor -> host read inside the block (see the module docstring).

    Example::

        with count_host_reads() as reads:
            method.training_step(batch, iteration)
        assert len(reads) == 1, reads.events
    """
    reads = HostReads()
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def wrap(name: str) -> Any:
        original = originals[name]

        def patched(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            reads.record(name)
            return original(self, *args, **kwargs)

        return patched

    cuda = torch.cuda.is_available()
    previous_mode = torch.cuda.get_sync_debug_mode() if cuda else 0
    try:
        for name in originals:
            setattr(torch.Tensor, name, wrap(name))
        with warnings.catch_warnings(record=True) as caught, _ReadMode(reads):
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            yield reads
        for w in caught:
            if "synchroniz" in str(w.message):
                reads.events.append(f"cuda sync: {w.message} at {w.filename}:{w.lineno}")
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        if cuda:
            torch.cuda.set_sync_debug_mode(previous_mode)
