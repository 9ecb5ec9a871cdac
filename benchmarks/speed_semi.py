"""Speed benchmark of the six semi-supervised methods and of sliding-window inference.

1. Training step (forward + backward + SGD step + the method's after-step hook) on one synthetic batch
   of ``labeled + unlabeled`` volumes, iteration counter past the ramp-up (full loss weights). Each
   method runs in its own subprocess so that its peak process memory (``ru_maxrss``) is its own; the
   methods take turns over ``--rounds`` rounds and the median step time is reported as a ratio to
   ``supervised`` (and to ``dual_branch``) measured in the same run. Feature-pool memory of the pooled
   methods (``pool_bytes`` from the step logs, i.e. ``FeaturePool.memory_bytes()``).
2. Sliding-window inference of CORN's branch 1 over one volume: one window at a time
   (``plain_sliding_window_predict``) versus ``sliding_window_predict`` with the device's default batch
   and with explicit batches, at fp32 and bf16 autocast; the same windows every time.

Sizes: ``--size cpu`` (V-Net width 8, 48×48×32 patches, batch 2+2; inference: 48 non-overlapping
48×48×32 windows on 160×160×96, bf16 one call per variant because a CPU without bf16 units runs it ~10×
slower) and ``--size la`` (the published size: width 16, 112×112×80, 80 windows at stride 18/18/4 on
160×160×96; for a GPU, written to ``speed_semi_la.{json,md}``). ``--quick`` is a smoke run (one warm-up
and one timed iteration, one round, a 96×48×32 volume) that writes to ``benchmarks/results/raw/quick/``.

Regenerate: ``.venv/bin/python benchmarks/speed_semi.py`` (writes ``benchmarks/results/speed_semi.{json,md}``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import _limits as L  # noqa: E402

SIZES: dict[str, dict[str, Any]] = {
    "cpu": {"width": 8, "patch": (48, 48, 32), "labeled_bs": 2, "unlabeled_bs": 2,
            "inf_patch": (48, 48, 32), "inf_stride": (48, 48, 32), "volume": (160, 160, 96),
            "batch_sizes": (2, 4)},
    "la": {"width": 16, "patch": (112, 112, 80), "labeled_bs": 2, "unlabeled_bs": 2,
           "inf_patch": (112, 112, 80), "inf_stride": (18, 18, 4), "volume": (160, 160, 96),
           "batch_sizes": (4, 8)},
}
#: Smoke-run inference volume: non-overlapping windows keep bf16 on a CPU (no bf16 units) short.
QUICK_VOLUME = (96, 48, 32)
#: Iteration counter used for timing: past the 40 × 150 ramp-up, so every loss term has full weight.
TIMING_ITERATION = 7000
CORN_TARGET = 1.05


# ------------------------------------------------------------------------------------- the worker
def make_batch(patch: tuple[int, ...], labeled_bs: int, unlabeled_bs: int, device: Any, seed: int = 0) -> Any:
    """A :class:`SemiBatch` of spheres in noise: image (B, 1, *patch), label (B, *patch), B = L + U."""
    import torch

    from medssl.methods import SemiBatch

    g = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1, 1, s) for s in patch]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    images, labels = [], []
    for _ in range(labeled_bs + unlabeled_bs):
        centre = (torch.rand(len(patch), *([1] * len(patch)), generator=g) - 0.5) * 0.6
        radius = 0.3 + 0.2 * float(torch.rand(1, generator=g))
        mask = ((grid - centre) ** 2).sum(0).sqrt() < radius
        labels.append(mask.long())
        images.append(mask.float() + 0.7 * torch.randn(patch, generator=g))
    b = labeled_bs + unlabeled_bs
    return SemiBatch(image=torch.stack(images)[:, None].to(device), label=torch.stack(labels).to(device),
                     index=torch.arange(b, device=device), labeled_bs=labeled_bs)


def method_settings(name: str, width: int, n_labeled: int) -> dict[str, Any]:
    """Method config for the benchmark: network width, pool slots, the UA-MT schedule length."""
    from medssl.methods import METHODS

    fields = METHODS[name].config_class.model_fields
    settings: dict[str, Any] = {"network": {"base_width": width}}
    if "n_labeled" in fields:
        settings["n_labeled"] = n_labeled
    if "max_iterations" in fields:
        settings["max_iterations"] = 15000
    return settings


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(name: str, size: dict[str, Any], device_name: str, threads: int, warmup: int, iters: int) -> dict:
    """Time ``iters`` training steps of method ``name`` after ``warmup`` steps; ``name="none"`` only
    builds the batch (the process-memory baseline). Returns a JSON-able dict."""
    import torch

    C.set_threads(threads)
    device = torch.device(device_name)
    from medssl.methods import create_method
    from medssl.methods.base import log_values

    torch.manual_seed(0)
    unlabeled_bs = 0 if name == "supervised" else size["unlabeled_bs"]
    batch = make_batch(tuple(size["patch"]), size["labeled_bs"], unlabeled_bs, device)
    out: dict[str, Any] = {"method": name, "batch": [size["labeled_bs"], unlabeled_bs]}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if name != "none":
        method = create_method(name, method_settings(name, size["width"], 4)).to(device)
        method.train()
        opt = torch.optim.SGD(method.trainable_parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        times, terms, anchors, logs = [], [], [], {}

        def step(it: int) -> dict[str, float]:
            out = method.training_step(batch, it)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            method.after_optimizer_step(it)
            return out.logs

        for i in range(warmup + iters):
            _sync(device)
            t0 = time.perf_counter()
            raw = step(TIMING_ITERATION + i)
            _sync(device)
            elapsed = time.perf_counter() - t0
            logs = log_values(raw)  # after the clock: the step itself never waits for the device
            if i >= warmup:
                times.append(elapsed)
                terms.append(float(logs.get("coral_terms", logs.get("corr_terms", float("nan")))))
                anchors.append(float(logs.get("anchor_classes", float("nan"))))
        flops = L.count_flops(lambda: step(TIMING_ITERATION + warmup + iters))  # untimed
        out.update(sec_per_iter=times, logs=logs, correlation_terms=terms, anchor_classes=anchors, flops=flops,
                   parameters=sum(p.numel() for p in method.trainable_parameters()))
        pool = getattr(method, "pool", None)
        if pool is not None:
            out["pool_memory_bytes"] = int(pool.memory_bytes())
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def run_worker(name: str, args: argparse.Namespace, device: str, warmup: int, iters: int) -> dict:
    """Run :func:`worker` in a fresh Python process and return its result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--size", args.size,
           "--device", device, "--threads", str(args.threads), "--warmup", str(warmup), "--iters", str(iters),
           "--paired-iters", str(args.paired_iters)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


PAIR = ("dual_branch", "corn")


def paired_worker(size: dict[str, Any], device_name: str, threads: int, warmup: int, iters: int) -> dict:
    """dual_branch and CORN in one process on one batch, their steps alternating (A B, B A, ...):
    the load of a shared machine hits both alike. Returns each one's step times and FLOPs per step."""
    import torch

    C.set_threads(threads)
    device = torch.device(device_name)
    from medssl.methods import create_method

    batch = make_batch(tuple(size["patch"]), size["labeled_bs"], size["unlabeled_bs"], device)
    steps, flops = {}, {}
    for name in PAIR:
        torch.manual_seed(0)
        method = create_method(name, method_settings(name, size["width"], 4)).to(device).train()
        opt = torch.optim.SGD(method.trainable_parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        counter = iter(range(TIMING_ITERATION, TIMING_ITERATION + 10**6))

        def step(method: Any = method, opt: Any = opt, counter: Any = counter) -> None:
            it = next(counter)
            out = method.training_step(batch, it)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            method.after_optimizer_step(it)

        steps[name] = step
        for _ in range(warmup):
            step()
        flops[name] = L.count_flops(step)  # after the warm-up: the pool is filled, as in the timed steps
    times: dict[str, list[float]] = {name: [] for name in PAIR}
    for r in range(iters):
        for name in PAIR if r % 2 == 0 else PAIR[::-1]:
            _sync(device)
            t0 = time.perf_counter()
            steps[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {"seconds": times, "flops": flops, "warmup": warmup, "iters": iters}


def summarize_paired(raw: dict[str, Any], peak: float | None) -> dict[str, Any]:
    """Medians, the CORN / dual_branch ratio (of medians and median of per-round ratios), FLOP ratio."""
    t = raw["seconds"]
    med = {name: statistics.median(v) for name, v in t.items()}
    per_round = [c / d for c, d in zip(t["corn"], t["dual_branch"], strict=True)]
    return {"median_s": med, "ratio": med["corn"] / med["dual_branch"], "ratio_per_round": statistics.median(per_round),
            "flop_ratio": raw["flops"]["corn"] / raw["flops"]["dual_branch"], "iters": raw["iters"],
            "limits": {name: L.limit_fields(raw["flops"][name], med[name], peak, protocol=name) for name in PAIR},
            "raw": raw}


# ---------------------------------------------------------------------------------- inference part
def time_inference(size: dict[str, Any], volume: tuple[int, ...], stride: tuple[int, ...], device: Any,
                   repeats: int) -> dict[str, Any]:
    """Plain vs batched sliding-window inference over the same windows, fp32 and bf16 autocast."""
    import torch

    from medssl.engine.inference import (
        default_batch_size,
        pad_widths,
        plain_sliding_window_predict,
        sliding_window_predict,
        window_positions,
    )
    from medssl.methods import create_method

    torch.manual_seed(0)
    net = create_method("corn", method_settings("corn", size["width"], 4)).segmentation_network()
    net = net.to(device).eval()
    patch = tuple(size["inf_patch"])
    g = torch.Generator().manual_seed(1)
    image = torch.randn(volume, generator=g)
    padded = [d + a + b for d, (a, b) in zip(volume, pad_widths(volume, patch), strict=True)]
    n_windows = len(window_positions(padded, patch, stride))
    default_bs = default_batch_size(device)
    variants: list[tuple[str, str, int | None]] = []  # (label, precision, batch size; None = plain loop)
    for precision in ("32", "bf16"):
        variants.append((f"plain_{precision}", precision, None))
        variants.append((f"default_{precision}", precision, 0))
        for bs in size["batch_sizes"]:
            variants.append((f"batch{bs}_{precision}", precision, bs))

    def run(precision: str, bs: int | None) -> Any:
        if bs is None:
            return plain_sliding_window_predict(net, image, patch, stride, precision=precision, device=device)
        return sliding_window_predict(net, image, patch, stride, batch_size=bs or None, precision=precision,
                                      device=device)

    seconds: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    max_diff: dict[str, float] = {}
    reference: dict[str, Any] = {}
    for precision in ("32", "bf16"):  # warm-up: one small call per precision
        sliding_window_predict(net, torch.zeros(patch), patch, stride, batch_size=1, precision=precision,
                               device=device)
    # bf16 on a CPU without bf16 units runs ~10x slower than fp32: one call per variant there
    n_calls = {"32": repeats, "bf16": repeats if device.type != "cpu" else 1}
    for r in range(repeats):
        order = variants if r % 2 == 0 else variants[::-1]  # alternate the order against drift
        for label, precision, bs in order:
            if r >= n_calls[precision]:
                continue
            _sync(device)
            t0 = time.perf_counter()
            probs = run(precision, bs)
            _sync(device)
            seconds[label].append(time.perf_counter() - t0)
            if bs is None:
                reference[precision] = probs
            elif precision in reference:
                diff = float((probs - reference[precision]).abs().max())
                max_diff[label] = max(diff, max_diff.get(label, 0.0))
    med = {label: statistics.median(v) for label, v in seconds.items()}
    rows = []
    for label, precision, bs in variants:
        plain = med[f"plain_{precision}"]
        rows.append({"variant": label, "precision": "fp32" if precision == "32" else "bf16",
                     "batch_size": "one at a time" if bs is None else (default_bs if bs == 0 else bs),
                     "is_default": bs == 0, "seconds": seconds[label], "median_s": med[label],
                     "speedup_vs_plain": plain / med[label], "vs_plain_fp32": med["plain_32"] / med[label],
                     "max_abs_diff_vs_plain": max_diff.get(label)})
    return {"volume": list(volume), "patch": list(patch), "stride": list(stride), "windows": n_windows,
            "default_batch_size": default_bs, "repeats": repeats, "calls": n_calls, "variants": rows}


# ---------------------------------------------------------------------------------------- report
def summarize_training(results: dict[str, list[dict]], order: list[str], peak: float | None = None
                       ) -> list[dict[str, Any]]:
    """Median step time per method over every timed iteration of every round, ratios, and the achieved
    FLOP/s next to the device's fp32 ``peak`` (FLOP/s)."""
    med = {m: statistics.median([t for r in results[m] for t in r["sec_per_iter"]]) for m in order}
    base = results.get("none", [{}])
    base_rss = max((r.get("maxrss_mib", 0.0) for r in base), default=0.0)
    rows = []
    for m in order:
        runs = results[m]
        logs = runs[-1]["logs"]
        row = {"method": m, "median_s": med[m], "rounds": len(runs),
               "iterations_timed": sum(len(r["sec_per_iter"]) for r in runs),
               "x_supervised": med[m] / med["supervised"] if "supervised" in med else None,
               "x_dual_branch": med[m] / med["dual_branch"] if "dual_branch" in med else None,
               "maxrss_mib": max(r["maxrss_mib"] for r in runs),
               "maxrss_delta_mib": max(r["maxrss_mib"] for r in runs) - base_rss,
               "parameters": runs[-1]["parameters"], "batch": runs[-1]["batch"],
               "pool_bytes": logs.get("pool_bytes"), "pool_memory_bytes": runs[-1].get("pool_memory_bytes"),
               "correlation_terms": _range([t for r in runs for t in r["correlation_terms"]]),
               "anchor_classes": _range([a for r in runs for a in r["anchor_classes"]]), "last_logs": logs}
        if "peak_gpu_mib" in runs[-1]:
            row["peak_gpu_mib"] = max(r["peak_gpu_mib"] for r in runs)
        if "flops" in runs[-1]:
            row.update(L.limit_fields(runs[-1]["flops"], med[m], peak, protocol=m))
        rows.append(row)
    return rows


def _range(values: list[float]) -> str | None:
    """``"a"`` or ``"a–b"`` (min–max of the finite values, as integers); None when there are none."""
    vals = C.finite(values)
    if not vals:
        return None
    lo, hi = int(min(vals)), int(max(vals))
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _fmt(x: float | None, digits: int = 2, suffix: str = "") -> str:
    return "—" if x is None else f"{x:.{digits}f}{suffix}"


def render(data: dict[str, Any]) -> str:
    env, size, train, inf = data["environment"], data["size"], data["training"], data["inference"]
    cmd = data["command"]
    lines = [f"# Semi-supervised speed benchmark ({data['size_name']} size{', QUICK smoke run' if data['quick'] else ''})",
             "", f"Command: `{cmd}` (writes `{data['json_name']}`).",
             f"Machine: {env['processor']}, {env.get('gpu', 'no GPU')}, device `{env['device']}`, "
             f"{env['threads']} torch thread(s), torch {env['torch']}, {env['date_utc']} UTC. Speeds are "
             "ratios measured in this run; the absolute seconds depend on the machine and its load.", "",
             "## Training step", "",
             f"Forward + backward + SGD step + after-step hook on one synthetic batch of "
             f"{size['labeled_bs']} labeled + {size['unlabeled_bs']} unlabeled volumes of "
             f"{'×'.join(map(str, size['patch']))} voxels (supervised: the labeled rows only), V-Net width "
             f"{size['width']}, iteration counter {TIMING_ITERATION} (full loss weights). Each method runs in "
             f"its own process; median over {data['settings']['rounds']} round(s) × {data['settings']['iters']} "
             f"timed iterations after {data['settings']['warmup']} warm-up iteration(s). Peak memory = the "
             "process's `ru_maxrss` (Δ = minus a process that only imports torch and builds the batch: "
             f"{_fmt(data['baseline_maxrss_mib'], 0)} MiB).", ""]
    if not train:  # --rounds 0: only the interleaved CORN / dual_branch pair
        lines = lines[:-1] + ["(`--rounds 0`: no per-method processes; the pair below is the measurement.)"]
    header = ["method", "batch (L+U)", "median s / iteration", "× supervised", "× dual_branch",
              "peak RSS (MiB)", "Δ RSS (MiB)", "feature pool (KiB)", "anchor classes", "correlation terms"]
    has_gpu = any("peak_gpu_mib" in r for r in train)
    if has_gpu:
        header.insert(7, "peak GPU (MiB)")
    rows = []
    for r in train:
        name = f"**{r['method']}**" if r["method"] == "corn" else r["method"]
        row = [name, "+".join(map(str, r["batch"])), _fmt(r["median_s"], 3), _fmt(r["x_supervised"]),
               _fmt(r["x_dual_branch"]), _fmt(r["maxrss_mib"], 0), _fmt(r["maxrss_delta_mib"], 0),
               "—" if r["pool_bytes"] is None else f"{r['pool_bytes'] / 1024:.1f}",
               r["anchor_classes"] or "—", r["correlation_terms"] or "—"]
        if has_gpu:
            row.insert(7, _fmt(r.get("peak_gpu_mib"), 0))
        rows.append(row)
    if rows:
        lines.append(C.markdown_table(header, rows))
    ratio = data.get("corn_over_dual_branch")
    if ratio is not None:
        lines += ["", f"CORN / dual_branch step time from the per-method processes above: {ratio:.2f}× (processes run in "
                  "turn, so on a machine shared with other work this ratio follows the load; the interleaved pair "
                  f"{'below' if data.get('paired') else 'of `--rounds 0` (`speed_semi_paired.md`)'} is the comparable "
                  f"measurement against the ≤ {CORN_TARGET:.2f}× target). The feature pool column is `pool_bytes` from "
                  "the step logs (= `FeaturePool.memory_bytes()`, features plus count tables), bounded by "
                  "`pool_memory_mb`. Anchor classes and correlation terms (min–max over the timed iterations) show how "
                  "much of the correlation loss was formed: CORN's terms are CORAL distances (4 = every unlabeled class "
                  "against every anchor class), CAML's the unlabeled feature rows compared."]
    lines += paired_section(data)
    lines += limits_section(data)
    if not inf["variants"]:
        return "\n".join([*lines, "", "Sliding-window inference: skipped (`--skip-inference`)."])
    lines += ["", "## Sliding-window inference", "",
              f"CORN branch 1 (width {size['width']}) over a {'×'.join(map(str, inf['volume']))} volume: "
              f"{inf['windows']} windows of {'×'.join(map(str, inf['patch']))}, stride "
              f"{'/'.join(map(str, inf['stride']))}; median of {inf['calls']['32']} call(s) per fp32 variant and "
              f"{inf['calls']['bf16']} per bf16 variant, variants interleaved. The default batch on this device is "
              f"{inf['default_batch_size']}.", ""]
    rows = []
    for v in inf["variants"]:
        label = v["variant"].replace("_32", " fp32").replace("_bf16", " bf16")
        if v["is_default"]:
            label += " (default)"
        diff = v["max_abs_diff_vs_plain"]
        rows.append([label, v["batch_size"], _fmt(v["median_s"], 3), _fmt(v["speedup_vs_plain"]),
                     _fmt(v["vs_plain_fp32"]), "—" if diff is None else f"{diff:.1e}"])
    lines.append(C.markdown_table(["variant", "windows / pass", "median s", "speed-up vs one at a time (same "
                                   "precision)", "speed-up vs one at a time fp32", "max |Δprob| vs one at a time"],
                                  rows))
    lines += ["", "Reading:", ""] + [f"- {n}" for n in data["notes"]]
    return "\n".join(lines)


def paired_section(data: dict[str, Any]) -> list[str]:
    """CORN against dual_branch with their steps alternating in one process (the robust ratio)."""
    pair = data.get("paired")
    if not pair:
        return []
    med, lim = pair["median_s"], pair["limits"]
    verdict = "meets" if pair["ratio"] <= CORN_TARGET else "misses"
    return ["", "## CORN vs dual_branch, interleaved", "",
            f"Both methods built in one process on the same batch; their training steps alternate (dual_branch, "
            f"CORN, then CORN, dual_branch, ...) for {pair['iters']} steps each, so load from other work on the "
            f"machine hits both alike.", "",
            C.markdown_table(["method", "median s / iteration", "GFLOP / iteration", "achieved GFLOP/s"],
                             [[m, _fmt(med[m], 3), _fmt(lim[m]["gflop_per_iter"], 1), _fmt(lim[m]["achieved_gflops"], 1)]
                              for m in PAIR]), "",
            f"**CORN / dual_branch: {pair['ratio']:.3f}×** (median of the per-round ratios {pair['ratio_per_round']:.3f}×; "
            f"target ≤ {CORN_TARGET:.2f}×: {verdict} it). By FLOPs CORN needs {pair['flop_ratio']:.3f}× the "
            "dual-branch step (the projection / prediction heads over every agreeing unlabeled voxel and the "
            "pool's projection of the labeled voxels), a floor that removing overhead cannot go below."]


def limits_section(data: dict[str, Any]) -> list[str]:
    """The "how close to the hardware" table: FLOPs per step, achieved FLOP/s, share of the peak, and the
    rate the published CORN protocol needs for ten minutes."""
    rows = [r for r in data["training"] if r.get("gflop_per_iter") is not None]
    if not rows:
        return []
    peaks = data.get("peaks", {})
    peak = peaks.get("fp32")
    lines = ["", "## Against the hardware limit", "",
             f"FLOPs of one training step counted with `torch.utils.flop_counter.FlopCounterMode` (convolutions and "
             f"matrix products, forward + backward; element-wise work not counted), divided by the median step "
             f"time. fp32 peak: **{_fmt(peak / 1e9 if peak else None, 1)} GFLOP/s** ({peaks.get('source', '?')}); "
             f"bf16 peak: {_fmt(peaks['bf16'] / 1e12 if peaks.get('bf16') else None, 0)} TFLOP/s. "
             f"The published CORN protocol ({L.PROTOCOL_ITERATIONS['corn']:,} iterations) needs "
             f"{L.required_rate(L.PROTOCOL_ITERATIONS['corn']):.0f} iterations / s to finish in "
             f"{L.TARGET_MINUTES:.0f} minutes.", ""]
    table = []
    for r in rows:
        need = r.get("required_iterations_per_s")
        table.append([r["method"], _fmt(r["gflop_per_iter"], 1), _fmt(r["achieved_gflops"], 1),
                      "—" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:.0%}",
                      _fmt(r["iterations_per_s"], 3), "—" if need is None else f"{need:.0f}",
                      "—" if need is None else f"{r['protocol_minutes']:.0f}"])
    lines.append(C.markdown_table(["method", "GFLOP / iteration", "achieved GFLOP/s", "of fp32 peak",
                                   "iterations / s", "needed for 10 min", "protocol minutes at this rate"],
                                  table))
    return lines


def notes(data: dict[str, Any]) -> list[str]:
    """Plain-language readings of the numbers (written into the table)."""
    out = []
    pair = data.get("paired")
    if pair:
        out.append(f"Interleaved in one process, CORN costs {pair['ratio']:.2f}× the dual-branch step "
                   f"({'within' if pair['ratio'] <= CORN_TARGET else 'above'} the {CORN_TARGET:.2f}× target).")
    variants = {v["variant"]: v for v in data["inference"]["variants"]}
    for p, name in (("32", "fp32"), ("bf16", "bf16")):
        d = variants[f"default_{p}"]
        best = max((v for v in variants.values() if v["variant"].startswith("batch") and
                    v["variant"].endswith(f"_{p}")), key=lambda v: v["speedup_vs_plain"])
        status = "not slower than" if d["speedup_vs_plain"] >= 0.95 else "SLOWER than"
        noise = "; one call each, so within noise" if data["inference"]["calls"][p] < 2 else ""
        out.append(f"{name}: the default ({d['batch_size']} window(s) per pass) runs at "
                   f"{d['speedup_vs_plain']:.2f}× the one-at-a-time loop ({status} it, 5 % margin{noise}); "
                   f"the fastest explicit batch ({best['batch_size']} per pass) at {best['speedup_vs_plain']:.2f}×.")
    if data["environment"]["device"] == "cpu":
        best32 = max(v["speedup_vs_plain"] for v in variants.values() if v["variant"].endswith("_32"))
        default32 = next((v for v in variants.values() if v["variant"].startswith("default")
                          and v["variant"].endswith("_32")), None)
        if best32 > 1.1 and default32 is not None:
            out.append(f"On this CPU batching windows was faster ({best32:.2f}× at best) at this window size; "
                       f"the CPU default ({default32['batch_size']} window(s) per pass) reached "
                       f"{default32['speedup_vs_plain']:.2f}×.")
        else:
            out.append("On this CPU batching windows gained nothing at this window size, as expected for the "
                       "CPU default of one window per pass.")
        bf16 = variants["plain_bf16"]["vs_plain_fp32"]
        out.append(f"bf16 autocast ran at {bf16:.2f}× the fp32 speed on this CPU"
                   + (" (no native bf16 units: bf16 is for GPUs)." if bf16 < 0.9 else "."))
    if data["quick"]:
        out.append("QUICK smoke run: few iterations, one round, a small volume with non-overlapping windows; "
                   "the numbers only show that the benchmark works.")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run (well under 2 minutes on 2 CPU cores)")
    p.add_argument("--size", choices=sorted(SIZES), default="cpu", help="cpu (width 8, 48x48x32) or la (GPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1: see _common.DEFAULT_THREADS)")
    p.add_argument("--methods", nargs="+", default=list(C.METHODS), choices=list(C.METHODS))
    p.add_argument("--rounds", type=int, default=None, help="rounds over the methods (default 3; quick 1)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations per process (default 2; quick 1)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations per process (default 5; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="calls per inference variant (default 3; quick 1)")
    p.add_argument("--skip-inference", action="store_true", help="only the training-step part")
    p.add_argument("--paired-iters", type=int, default=None,
                   help="alternating dual_branch / CORN steps in one process (default 12; quick 2; 0: skip)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    args.threads = args.threads if args.threads is not None else C.DEFAULT_THREADS
    if args.paired_iters is None:
        args.paired_iters = 2 if args.quick else 12
    size = SIZES[args.size]
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    iters = args.iters if args.iters is not None else (1 if args.quick else 5)
    if args.worker == "paired":
        print(json.dumps(paired_worker(size, device, args.threads, warmup, args.paired_iters)), flush=True)
        return 0
    if args.worker is not None:
        print(json.dumps(worker(args.worker, size, device, args.threads, warmup, iters)), flush=True)
        return 0

    t_start = time.perf_counter()
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    command = C.regenerate_command("speed_semi.py", argv)
    C.say(f"regenerate with: {command}")
    threads = C.set_threads(args.threads)
    methods = [m for m in C.METHODS if m in args.methods]
    results: dict[str, list[dict]] = {m: [] for m in ["none", *methods]}
    results["none"].append(run_worker("none", args, device, warmup, iters))
    for r in range(rounds):
        order = methods if r % 2 == 0 else methods[::-1]
        for m in order:
            res = run_worker(m, args, device, warmup, iters)
            results[m].append(res)
            C.say(f"round {r + 1}/{rounds} {m}: median {statistics.median(res['sec_per_iter']):.3f} s/iteration, "
                  f"peak RSS {res['maxrss_mib']:.0f} MiB")
    paired = None
    if args.paired_iters > 0 and all(m in methods for m in PAIR):
        C.say(f"paired: dual_branch and corn alternating, {args.paired_iters} steps each")
        paired = run_worker("paired", args, device, warmup, iters)
    peaks = L.device_peaks(device)
    C.say(f"fp32 peak: {peaks['fp32'] / 1e9 if peaks['fp32'] else float('nan'):.1f} GFLOP/s ({peaks['source']})")
    training = summarize_training(results, methods if rounds > 0 else [], peaks["fp32"])
    by_name = {row["method"]: row for row in training}
    data: dict[str, Any] = {
        "benchmark": "speed_semi", "quick": args.quick, "size_name": args.size, "size": size,
        "command": command, "environment": C.environment(threads, device), "peaks": peaks,
        "settings": {"rounds": rounds, "warmup": warmup, "iters": iters, "repeats": repeats},
        "baseline_maxrss_mib": results["none"][0]["maxrss_mib"], "training": training,
        "corn_over_dual_branch": (by_name["corn"]["median_s"] / by_name["dual_branch"]["median_s"]
                                  if "corn" in by_name and "dual_branch" in by_name else None),
        "raw": results, "paired": None if paired is None else summarize_paired(paired, peaks["fp32"]),
    }
    if not args.skip_inference:
        volume = QUICK_VOLUME if args.quick else tuple(size["volume"])
        stride = tuple(size["inf_patch"]) if args.quick else tuple(size["inf_stride"])
        C.say(f"inference: {'x'.join(map(str, volume))} volume, {len(size['batch_sizes']) * 2 + 4} variants")
        data["inference"] = time_inference(size, volume, stride, torch.device(device), repeats)
    else:
        data["inference"] = {"volume": [], "patch": [], "stride": [], "windows": 0, "default_batch_size": 0,
                             "repeats": 0, "calls": {}, "variants": []}
    data["seconds_total"] = time.perf_counter() - t_start
    data["notes"] = notes(data) if data["inference"]["variants"] else []
    out_dir = args.out if args.out is not None else C.results_root(args.quick)
    stem = ("speed_semi" if args.size == "cpu" else f"speed_semi_{args.size}") + ("_paired" if rounds == 0 else "")
    data["json_name"] = f"{stem}.json"
    json_path, md_path = C.write_outputs(out_dir, stem, data, render(data))
    C.say(f"wrote {C.rel(json_path)} and {C.rel(md_path)} in {data['seconds_total']:.0f} s")
    C.say(f"regenerate with: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
