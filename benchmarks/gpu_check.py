"""GPU check: CORN training-step speed at the published size (112x112x80, batch 2+2), fp32 vs bf16.

Also times dual_branch and supervised in the same run (ratios are what to compare) and batched vs
one-window-at-a-time sliding-window inference. Writes JSON to the folder given as the first argument.
Regenerate: ``bash benchmarks/gpu_check.sh`` on a CUDA machine.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from medssl.engine.inference import plain_sliding_window_predict, sliding_window_predict
from medssl.methods import SemiBatch, create_method

PATCH = (112, 112, 80)


def make_batch(device: torch.device, seed: int = 0) -> SemiBatch:
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, s) for s in PATCH], indexing="ij"))
    labels, images = [], []
    for _ in range(4):
        centre = (torch.rand(3, 1, 1, 1, generator=g) - 0.5) * 0.6
        radius = 0.3 + 0.2 * torch.rand(1, generator=g).item()
        mask = ((grid - centre) ** 2).sum(0).sqrt() < radius
        labels.append(mask.long())
        images.append(mask.float() + 0.7 * torch.randn(PATCH, generator=g))
    return SemiBatch(image=torch.stack(images)[:, None].to(device), label=torch.stack(labels).to(device),
                     index=torch.tensor([0, 1, 2, 3], device=device), labeled_bs=2)


def time_method(name: str, precision: str, device: torch.device, warmup: int = 3, iters: int = 10) -> dict:
    torch.manual_seed(0)
    method = create_method(name, {"n_labeled": 4} if name in ("corn", "caml") else None).to(device)
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    batch = make_batch(device)
    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + iters):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = method.training_step(batch, 7000 + i)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        method.after_optimizer_step(7000 + i)
    torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / iters
    return {"method": name, "precision": precision, "sec_per_iter": sec, "iter_per_sec": 1 / sec,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            "loss": float(out.loss.detach().float()),
            "logs": {k: float(v) for k, v in out.logs.items()}}


def time_inference(device: torch.device) -> dict:
    net = create_method("corn", {"n_labeled": 4}).segmentation_network().to(device).eval()
    image = torch.randn(144, 144, 88)
    res = {}
    for label, fn, kw in [("plain_fp32", plain_sliding_window_predict, {}),
                          ("batched4_fp32", sliding_window_predict, {"batch_size": 4}),
                          ("batched8_bf16", sliding_window_predict, {"batch_size": 8, "precision": "bf16"})]:
        fn(net, image, device=device, **kw)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(net, image, device=device, **kw)
        torch.cuda.synchronize()
        res[label] = time.perf_counter() - t0
    return res


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": []}
    for name in ("supervised", "dual_branch", "corn"):
        for precision in ("fp32", "bf16"):
            r = time_method(name, precision, device)
            print(json.dumps({k: v for k, v in r.items() if k != "logs"}), flush=True)
            results["steps"].append(r)
    results["inference_seconds_144x144x88"] = time_inference(device)
    print(json.dumps(results["inference_seconds_144x144x88"]), flush=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
