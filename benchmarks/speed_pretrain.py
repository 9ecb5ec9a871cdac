"""Speed benchmark of masked pretraining (SparK / Mask What Matters).

1. Masking: one full training step (ROI patch labels + mask draw + SparK forward / backward + LAMB step)
   with region-guided masks (0.8 / 0.4) versus uniform random masks (0.6), ResNet-18; the two alternate
   step by step on the same batch. Target: guided within 5 % of random. The mask draw alone is timed too.
2. Sparse encoder: forward + backward of the sparse encoder (visible patches only, mask ratio 0.6)
   versus the plain dense encoder on the same input (ResNet-18 in 2D, the V-Net encoder in 3D), again
   alternating. Target: sparse ≤ 1.3× dense.
3. Throughput of the full SparK training step: images / s of ResNet-18 at 128² and ResNet-50 at 224²
   (2D, guided masks), volumes / s of the V-Net encoder (3D).

Every number in a table is a ratio measured in this run, or a rate for context; absolute times depend on
the machine and its load. ``--size cpu`` (default without a GPU) uses small batches, ``--size gpu``
(default with one) the reference-like batches and bf16 autocast. ``--quick`` is a smoke run (tiny images,
two timed steps) written to ``benchmarks/results/raw/quick/``.

Regenerate: ``.venv/bin/python benchmarks/speed_pretrain.py`` (writes
``benchmarks/results/speed_pretrain.{json,md}``; ``--size gpu``: ``speed_pretrain_gpu.*``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import _limits as L  # noqa: E402

GUIDED_TARGET = 1.05
SPARSE_TARGET = 1.3
#: SparK step / dense encoder forward + backward, per MIM case (issue 14).
MIM_TARGETS = {"resnet18_128": 7.0, "resnet50_224": 4.0}
RATIOS = (0.8, 0.4)
RANDOM_RATIO = 0.6

#: Per size: the masking / sparse-encoder comparison model and the throughput cases
#: (name, backbone, dims, spatial size, batch, decoder width (None: default), V-Net width).
SIZES: dict[str, dict[str, Any]] = {
    "cpu": {"compare": ("resnet18", 2, (128, 128), 8, 256, 16),
            "sparse_3d": ("vnet", 3, (64, 64, 32), 2, None, 16),
            "throughput": [("resnet18_128", "resnet18", 2, (128, 128), 8, None, 16),
                           ("resnet50_224", "resnet50", 2, (224, 224), 2, None, 16),
                           ("vnet16_112x112x80", "vnet", 3, (112, 112, 80), 1, None, 16)],
            "mim": [("resnet18_128", "resnet18", (128, 128), 8), ("resnet50_224", "resnet50", (224, 224), 8)],
            "precision": "32", "warmup": 1, "iters": 4},
    "gpu": {"compare": ("resnet18", 2, (128, 128), 64, None, 16),
            "sparse_3d": ("vnet", 3, (112, 112, 80), 4, None, 16),
            "throughput": [("resnet18_128", "resnet18", 2, (128, 128), 128, None, 16),
                           ("resnet50_224", "resnet50", 2, (224, 224), 128, None, 16),
                           ("vnet16_112x112x80", "vnet", 3, (112, 112, 80), 4, None, 16)],
            "mim": [("resnet18_128", "resnet18", (128, 128), 8), ("resnet50_224", "resnet50", (224, 224), 64)],
            "precision": "bf16", "warmup": 3, "iters": 10},
    "quick": {"compare": ("resnet18", 2, (64, 64), 2, 64, 16),
              "sparse_3d": ("vnet", 3, (32, 32, 16), 2, None, 4),
              "throughput": [("resnet18_64", "resnet18", 2, (64, 64), 2, 64, 16),
                             ("resnet50_64", "resnet50", 2, (64, 64), 2, 64, 16),
                             ("vnet4_32x32x16", "vnet", 3, (32, 32, 16), 2, None, 4)],
              "mim": [("resnet18_64", "resnet18", (64, 64), 2)],
              "precision": "32", "warmup": 1, "iters": 2},
}


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: Any, precision: str) -> Any:
    import contextlib

    import torch

    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_batch(dims: int, spatial: tuple[int, ...], batch: int, device: Any, seed: int = 0) -> tuple[Any, Any]:
    """Images (B, 1, *S) of noise with a bright box each, and the box ROI maps (B, *S) bool (CPU)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 1, *spatial, generator=g)
    rois = torch.zeros(batch, *spatial, dtype=torch.bool)
    for b in range(batch):
        region = []
        for s in spatial:
            size = int(s * (0.2 + 0.3 * float(torch.rand(1, generator=g))))
            start = int(torch.randint(0, s - size + 1, (1,), generator=g))
            region.append(slice(start, start + size))
        rois[(b, *region)] = True
        images[(b, 0, *region)] += 2.0
    return images.to(device), rois


def _build(backbone: str, dims: int, decoder_width: int | None, vnet_width: int, device: Any) -> Any:
    from medssl.models.spark import build_spark

    return build_spark(backbone, dims=dims, decoder_width=decoder_width, vnet_width=vnet_width).to(device).train()


def _step_fn(model: Any, images: Any, rois: Any, kind: str, device: Any, precision: str) -> Any:
    """A closure running one full training step with a fresh mask of ``kind``."""
    import torch

    from medssl.engine.schedules import build_lamb, param_groups
    from medssl.masking import guided_mask, random_mask, roi_patch_labels

    opt = build_lamb(param_groups(model, 0.04), lr=1e-4)
    gen = torch.Generator().manual_seed(1)

    def step() -> float:
        labels = roi_patch_labels(rois, model.patch_size, "topleft")
        if kind == "guided":
            visible = guided_mask(labels, RATIOS[0], RATIOS[1], gen)
        else:
            visible = random_mask(labels.shape[0], labels.shape[1:], RANDOM_RATIO, gen)
        with _autocast(device, precision):
            out = model(images, visible.to(device))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return float(out.loss.detach())

    return step


def _timed(fn: Any, device: Any) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _alternate(fns: dict[str, Any], device: Any, warmup: int, iters: int) -> dict[str, list[float]]:
    """Run each function ``warmup`` times, then ``iters`` timed rounds in alternating order."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(iters):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(_timed(fns[name], device))
    return times


def time_masking(size: dict[str, Any], device: Any, warmup: int, iters: int) -> dict[str, Any]:
    """Guided vs random masking: full training steps, and the mask draw alone."""
    import torch

    from medssl.masking import guided_mask, random_mask, roi_patch_labels

    backbone, dims, spatial, batch, width, vnet_width = size["compare"]
    images, rois = make_batch(dims, spatial, batch, device)
    torch.manual_seed(0)
    model = _build(backbone, dims, width, vnet_width, device)
    fns = {k: _step_fn(model, images, rois, k, device, size["precision"]) for k in ("guided", "random")}
    times = _alternate(fns, device, warmup, iters)
    gen = torch.Generator().manual_seed(2)
    labels = roi_patch_labels(rois, model.patch_size, "topleft")
    draw = {"guided": lambda: guided_mask(labels, RATIOS[0], RATIOS[1], gen),
            "random": lambda: random_mask(labels.shape[0], labels.shape[1:], RANDOM_RATIO, gen)}
    draw_times = _alternate(draw, torch.device("cpu"), 2, 50)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"backbone": backbone, "spatial": list(spatial), "batch": batch, "decoder_width": model.decoder_width,
            "grid": list(model.grid_for(spatial)), "seconds": times, "median_s": med,
            "guided_over_random": med["guided"] / med["random"],
            "mask_draw_median_us": {k: statistics.median(v) * 1e6 for k, v in draw_times.items()}}


def time_sparse(case: tuple, device: Any, warmup: int, iters: int, precision: str) -> dict[str, Any]:
    """Sparse encoder (mask ratio 0.6) vs the plain dense encoder: forward + backward of the features."""
    import torch

    from medssl.masking import random_mask
    from medssl.models.spark import dense_encoder
    from medssl.models.sparse import hierarchical_features

    backbone, dims, spatial, batch, width, vnet_width = case
    images, _ = make_batch(dims, spatial, batch, device)
    torch.manual_seed(0)
    model = _build(backbone, dims, width, vnet_width, device)
    dense = dense_encoder(backbone, dims=dims, vnet_width=vnet_width).to(device).train()
    dense.load_state_dict(model.encoder_state_dict())
    visible = random_mask(batch, model.grid_for(spatial), RANDOM_RATIO, torch.Generator().manual_seed(3)).to(device)

    def sparse_step() -> None:
        model.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            feats = model.sparse_encoder(images, visible)
        sum(f.float().mean() for f in feats).backward()

    def dense_step() -> None:
        dense.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            feats = hierarchical_features(dense, images)
        sum(f.float().mean() for f in feats).backward()

    times = _alternate({"sparse": sparse_step, "dense": dense_step}, device, warmup, iters)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"backbone": backbone if dims == 2 else f"vnet{vnet_width}", "dims": dims, "spatial": list(spatial),
            "batch": batch, "seconds": times, "median_s": med, "sparse_over_dense": med["sparse"] / med["dense"]}


def time_mim_vs_dense(case: tuple, device: Any, warmup: int, iters: int, precision: str,
                      peak: float | None) -> dict[str, Any]:
    """The SparK step against the dense timm encoder, alternating step by step on one batch.

    Variants: ``dense`` (dense encoder forward + backward of its features), ``encoder`` (the sparse
    encoder alone, forward + backward), ``spark`` (SparK forward + backward: encoder, densify, decoder,
    loss) and ``step`` (the full training step: mask draw, SparK forward + backward, gradient clip,
    LAMB). The decoder + densify + loss share is ``spark - encoder``. FLOPs of each variant are counted
    once, untimed.
    """
    import torch

    from medssl.masking import random_mask
    from medssl.models.spark import dense_encoder
    from medssl.models.sparse import hierarchical_features

    name, backbone, spatial, batch = case
    images, rois = make_batch(2, spatial, batch, device)
    torch.manual_seed(0)
    model = _build(backbone, 2, None, 16, device)
    dense = dense_encoder(backbone, dims=2).to(device).train()
    visible = random_mask(batch, model.grid_for(spatial), RANDOM_RATIO, torch.Generator().manual_seed(3)).to(device)

    def backward_of(module: Any, forward: Any) -> Any:
        def run() -> None:
            module.zero_grad(set_to_none=True)
            with _autocast(device, precision):
                out = forward()
            (out if isinstance(out, torch.Tensor) else sum(f.float().mean() for f in out)).backward()
        return run

    fns = {"dense": backward_of(dense, lambda: hierarchical_features(dense, images)),
           "encoder": backward_of(model, lambda: model.sparse_encoder(images, visible)),
           "spark": backward_of(model, lambda: model(images, visible).loss),
           "step": _step_fn(model, images, rois, "random", device, precision)}
    flops = {k: L.count_flops(fn) for k, fn in fns.items()}
    times = _alternate(fns, device, warmup, iters)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = {k: {"median_s": med[k], **L.limit_fields(flops[k], med[k], peak)} for k in fns}
    return {"case": name, "backbone": backbone, "spatial": list(spatial), "batch": batch,
            "decoder_width": model.decoder_width, "seconds": times, "variants": rows,
            "spark_over_dense": med["spark"] / med["dense"], "step_over_dense": med["step"] / med["dense"],
            "flops_spark_over_dense": flops["spark"] / flops["dense"],
            "decoder_share": (med["spark"] - med["encoder"]) / med["spark"],
            "target": MIM_TARGETS.get(name)}


def time_throughput(cases: list[tuple], device: Any, warmup: int, iters: int, precision: str) -> list[dict]:
    """Images (volumes) per second of the full SparK training step with guided masks."""
    import torch

    rows = []
    for name, backbone, dims, spatial, batch, width, vnet_width in cases:
        C.say(f"throughput {name}: batch {batch}")
        images, rois = make_batch(dims, spatial, batch, device)
        torch.manual_seed(0)
        model = _build(backbone, dims, width, vnet_width, device)
        step = _step_fn(model, images, rois, "guided", device, precision)
        times = _alternate({"step": step}, device, warmup, iters)["step"]
        med = statistics.median(times)
        rows.append({"case": name, "backbone": backbone, "dims": dims, "spatial": list(spatial), "batch": batch,
                     "decoder_width": model.decoder_width, "median_s": med, "per_second": batch / med,
                     "seconds": times})
        del model
    return rows


def _fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def render(data: dict[str, Any]) -> str:
    env, m = data["environment"], data["masking"]
    lines = [f"# Pretraining speed benchmark ({data['size_name']} size{', QUICK smoke run' if data['quick'] else ''})",
             "", f"Command: `{data['command']}` (writes `{data['json_name']}`).",
             f"Machine: {env['processor']}, {env.get('gpu', 'no GPU')}, device `{env['device']}`, {env['threads']} "
             f"torch thread(s), torch {env['torch']}, precision {data['precision']}, {env['date_utc']} UTC. Ratios "
             "are measured in this run (the compared variants alternate step by step); seconds depend on the "
             "machine and its load.", "", "## Masking: guided vs random", "",
             f"Full training step (ROI patch labels, mask draw, SparK forward + backward, gradient clip, LAMB) of "
             f"{m['backbone']} at {'×'.join(map(str, m['spatial']))}, batch {m['batch']}, decoder width "
             f"{m['decoder_width']}, patch grid {'×'.join(map(str, m['grid']))}; guided {RATIOS[0]} / {RATIOS[1]} "
             f"(top-left rule, one random box ROI per image) vs random {RANDOM_RATIO}. Median of "
             f"{len(m['seconds']['guided'])} timed steps each.", ""]
    ratio = m["guided_over_random"]
    lines.append(C.markdown_table(
        ["masking", "median s / step", "mask draw (µs)", "× random"],
        [["guided", _fmt(m["median_s"]["guided"], 3), _fmt(m["mask_draw_median_us"]["guided"], 0), _fmt(ratio, 3)],
         ["random", _fmt(m["median_s"]["random"], 3), _fmt(m["mask_draw_median_us"]["random"], 0), "1.000"]]))
    lines += ["", f"**guided / random step time: {ratio:.3f}×** (target ≤ {GUIDED_TARGET:.2f}×: "
              f"{'meets' if ratio <= GUIDED_TARGET else 'misses'} it in this run).", "",
              "## Sparse vs dense encoder", "",
              f"Forward + backward of the encoder features (mean of each feature map summed) with "
              f"{RANDOM_RATIO:.0%} of the patches masked (sparse) vs the plain dense encoder on the same input.", ""]
    rows = [[s["backbone"], "×".join(map(str, s["spatial"])), s["batch"], _fmt(s["median_s"]["sparse"], 3),
             _fmt(s["median_s"]["dense"], 3), f"**{s['sparse_over_dense']:.2f}**"] for s in data["sparse"]]
    lines.append(C.markdown_table(["encoder", "input", "batch", "sparse s", "dense s", "sparse / dense"], rows))
    worst = max(s["sparse_over_dense"] for s in data["sparse"])
    lines += ["", f"Target ≤ {SPARSE_TARGET:.1f}×: {'met' if worst <= SPARSE_TARGET else 'missed'} in this run "
              f"(worst {worst:.2f}×)."]
    lines += mim_section(data)
    lines += ["", "## Throughput", "", "Full SparK training step with guided masks (as above).", ""]
    rows = [[t["case"], "×".join(map(str, t["spatial"])), t["batch"], t["decoder_width"], _fmt(t["median_s"], 3),
             _fmt(t["per_second"], 2)] for t in data["throughput"]]
    lines.append(C.markdown_table(["case", "input", "batch", "decoder width", "median s / step",
                                   "images (volumes) / s"], rows))
    lines += ["", "Reading:", ""] + [f"- {n}" for n in data["notes"]]
    return "\n".join(lines)


def mim_section(data: dict[str, Any]) -> list[str]:
    """SparK step vs the dense encoder: ratios, the encoder / decoder split, FLOPs and the peak."""
    peaks = data.get("peaks", {})
    peak = peaks.get("fp32")
    lines = ["", "## SparK step vs the dense encoder", "",
             "Alternating step by step on one batch (random masks at 0.6, default decoder width): `dense` = the "
             "dense timm encoder's forward + backward of its features; `encoder` = the sparse encoder alone; "
             "`spark` = the SparK forward + backward (encoder, densify, decoder, loss); `step` = the full "
             "training step (mask draw, SparK forward + backward, gradient clip, LAMB). FLOPs from "
             "`FlopCounterMode` (convolutions and matrix products, forward + backward); fp32 peak "
             f"{_fmt(peak / 1e9 if peak else None, 1)} GFLOP/s ({peaks.get('source', '?')}).", ""]
    rows = []
    for case in data.get("mim", []):
        for variant, v in case["variants"].items():
            ratio = v["median_s"] / case["variants"]["dense"]["median_s"]
            rows.append([case["case"], case["batch"], variant, _fmt(v["median_s"], 3), f"{ratio:.2f}",
                         _fmt(v["gflop_per_iter"], 1), _fmt(v["achieved_gflops"], 1),
                         "—" if v["fraction_of_peak"] is None else f"{v['fraction_of_peak']:.0%}"])
    lines.append(C.markdown_table(["case", "batch", "variant", "median s", "× dense", "GFLOP", "achieved GFLOP/s",
                                   "of fp32 peak"], rows))
    lines.append("")
    for case in data.get("mim", []):
        target = case["target"]
        verdict = "" if target is None else (
            f" (target ≤ {target:.0f}×: {'meets' if case['spark_over_dense'] <= target else 'misses'} it for the "
            f"forward + backward, {'meets' if case['step_over_dense'] <= target else 'misses'} it for the full step)")
        lines.append(f"- **{case['case']}**: SparK forward + backward {case['spark_over_dense']:.2f}× the dense "
                     f"encoder, full step {case['step_over_dense']:.2f}×{verdict}; by FLOPs SparK is "
                     f"{case['flops_spark_over_dense']:.2f}× the dense encoder, and densify + decoder + loss take "
                     f"{case['decoder_share']:.0%} of the SparK forward + backward time.")
    return lines


def notes(data: dict[str, Any]) -> list[str]:
    out = []
    m = data["masking"]
    draw = m["mask_draw_median_us"]
    out.append(f"Guided masks cost {m['guided_over_random']:.3f}× the random-mask step; drawing the mask itself "
               f"takes {draw['guided']:.0f} µs (guided) vs {draw['random']:.0f} µs (random), "
               f"{draw['guided'] / 1e6 / m['median_s']['guided']:.2%} of a guided step.")
    for s in data["sparse"]:
        out.append(f"{s['backbone']}: the sparse encoder runs at {s['sparse_over_dense']:.2f}× the dense one "
                   "(it computes densely, then re-masks every layer and normalises over visible positions).")
    if data["quick"]:
        out.append("QUICK smoke run: tiny inputs and two timed steps; the numbers only show that the benchmark "
                   "works.")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run (tiny inputs, about a minute on 2 CPU cores)")
    p.add_argument("--size", choices=["cpu", "gpu"], default=None, help="default: gpu with CUDA, else cpu")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1: see _common.DEFAULT_THREADS)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant")
    p.add_argument("--iters", type=int, default=None, help="timed steps per variant")
    p.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results)")
    args = p.parse_args(argv)
    import torch

    device_name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device_name)
    size_name = args.size or ("gpu" if device.type == "cuda" else "cpu")
    size = SIZES["quick" if args.quick else size_name]
    warmup = args.warmup if args.warmup is not None else size["warmup"]
    iters = args.iters if args.iters is not None else size["iters"]
    command = C.regenerate_command("speed_pretrain.py", argv)
    C.say(f"regenerate with: {command}")
    threads = C.set_threads(args.threads)
    t_start = time.perf_counter()
    C.say("masking: guided vs random")
    masking = time_masking(size, device, warmup, iters)
    C.say(f"guided / random = {masking['guided_over_random']:.3f}")
    sparse = []
    for case in (size["compare"], size["sparse_3d"]):
        C.say(f"sparse vs dense: {case[0]}")
        sparse.append(time_sparse(case, device, warmup, iters, size["precision"]))
        C.say(f"sparse / dense = {sparse[-1]['sparse_over_dense']:.2f}")
    peaks = L.device_peaks(device_name)
    mim = []
    for case in size["mim"]:
        C.say(f"SparK vs dense: {case[0]} batch {case[3]}")
        mim.append(time_mim_vs_dense(case, device, warmup, iters, size["precision"], peaks["fp32"]))
        C.say(f"spark / dense = {mim[-1]['spark_over_dense']:.2f}, step / dense = {mim[-1]['step_over_dense']:.2f}")
    throughput = time_throughput(size["throughput"], device, warmup, iters, size["precision"])
    stem = "speed_pretrain" if size_name == "cpu" else f"speed_pretrain_{size_name}"
    data: dict[str, Any] = {
        "benchmark": "speed_pretrain", "quick": args.quick, "size_name": size_name, "command": command,
        "precision": size["precision"], "environment": C.environment(threads, device_name),
        "settings": {"warmup": warmup, "iters": iters}, "masking": masking, "sparse": sparse,
        "throughput": throughput, "json_name": f"{stem}.json", "mim": mim, "peaks": peaks,
        "targets": {"guided_over_random": GUIDED_TARGET, "sparse_over_dense": SPARSE_TARGET},
    }
    data["notes"] = notes(data)
    data["seconds_total"] = time.perf_counter() - t_start
    out_dir = args.out if args.out is not None else C.results_root(args.quick)
    json_path, md_path = C.write_outputs(out_dir, stem, data, render(data))
    C.say(f"wrote {C.rel(json_path)} and {C.rel(md_path)} in {data['seconds_total']:.0f} s")
    C.say(f"regenerate with: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
