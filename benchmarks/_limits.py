"""How close a benchmark runs to the hardware: FLOPs per step, the device's peak, and the rate a
published protocol needs to finish in ten minutes.

* FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` over one step (matrix products
  and convolutions, forward and backward; element-wise work is not counted), in a separate untimed call.
* Peaks: on a CPU the **measured** fp32 matrix-product rate of the threads in use (best of several
  1024 x 1024 x 1024 ``torch.mm`` calls): the practical ceiling of the GEMM / convolution kernels, not a
  datasheet figure. On a GPU the **datasheet** dense (no structured sparsity) fp32 and bf16 tensor-core
  peaks of the recognised NVIDIA parts below.
* Required rate: ``iterations / (minutes * 60)``; CORN's published protocol is 15 000 iterations
  (spec/corn.md), so ten minutes need 25 iterations / s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: Published protocol lengths (optimizer steps).
PROTOCOL_ITERATIONS: dict[str, int] = {"corn": 15_000}
#: The wall-clock budget the required rates refer to.
TARGET_MINUTES = 10.0

#: (name fragment, part, fp32 TFLOP/s, bf16 dense tensor TFLOP/s), most specific first (NVIDIA datasheets).
GPU_PEAKS: tuple[tuple[str, str, float, float], ...] = (
    ("H200 NVL", "H200 NVL", 60.0, 835.0),
    ("H200", "H200 SXM", 67.0, 989.0),
    ("H100 NVL", "H100 NVL", 60.0, 835.0),
    ("H100 PCIe", "H100 PCIe", 51.0, 756.0),
    ("H100", "H100 SXM", 67.0, 989.0),
    ("A100", "A100", 19.5, 312.0),
)


def required_rate(iterations: int, minutes: float = TARGET_MINUTES) -> float:
    """Iterations per second needed to run ``iterations`` in ``minutes``."""
    return iterations / (minutes * 60.0)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matrix products and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measured_cpu_peak(n: int = 1024, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of an ``n``-cubed ``torch.mm`` on the current torch threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def device_peaks(device: str) -> dict[str, Any]:
    """``{"fp32": FLOP/s, "bf16": FLOP/s or None, "source": text}`` for ``device`` ("cpu" or "cuda...")."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
        for fragment, part, fp32, bf16 in GPU_PEAKS:
            if fragment in name:
                return {"fp32": fp32 * 1e12, "bf16": bf16 * 1e12,
                        "source": f"NVIDIA datasheet, {part}, dense fp32 / bf16 tensor-core peaks"}
        return {"fp32": None, "bf16": None, "source": f"unknown peak for {name}"}
    threads = torch.get_num_threads()
    return {"fp32": measured_cpu_peak(), "bf16": None,
            "source": f"measured: best of 5 fp32 1024x1024x1024 torch.mm on {threads} thread(s)"}


def limit_fields(flops: int, seconds: float, peak: float | None, protocol: str | None = None) -> dict[str, Any]:
    """Achieved rate next to the peak (and the required rate of ``protocol``) for one timed step."""
    achieved = flops / seconds if seconds > 0 else None
    out: dict[str, Any] = {"gflop_per_iter": flops / 1e9, "achieved_gflops": None if achieved is None else achieved / 1e9,
                           "fraction_of_peak": None if achieved is None or not peak else achieved / peak,
                           "iterations_per_s": 1.0 / seconds if seconds > 0 else None}
    if protocol in PROTOCOL_ITERATIONS:
        need = required_rate(PROTOCOL_ITERATIONS[protocol])
        out.update(required_iterations_per_s=need, protocol_minutes=PROTOCOL_ITERATIONS[protocol] * seconds / 60.0)
    return out


__all__ = ["GPU_PEAKS", "PROTOCOL_ITERATIONS", "TARGET_MINUTES", "count_flops", "device_peaks", "limit_fields",
           "measured_cpu_peak", "required_rate"]
