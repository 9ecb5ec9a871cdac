"""count_host_reads: the CPU proxy for device synchronisations (tensor -> Python reads)."""

from __future__ import annotations

import torch

from medssl.runtime.host_sync import count_host_reads


def test_counter_sees_every_kind_of_host_read() -> None:
    x = torch.randn(10)
    with count_host_reads() as reads:
        y = (x * 2 + 1).sum()  # device work only
    assert len(reads) == 0
    with count_host_reads() as reads:
        float(y)
        int(x.argmax())
        bool(x[0] > 0)
        x[x > 0]
        x.nonzero()
        x.tolist()
    kinds = [e.split(" at ")[0] for e in reads.events]
    assert kinds == ["_local_scalar_dense"] * 3 + ["index with a boolean mask", "nonzero", "tolist"]
    assert all(" at test_host_sync.py:" in e for e in reads.events)  # where the read was asked for
    assert torch.Tensor.tolist(torch.ones(1)) == [1.0]  # patches removed on exit
