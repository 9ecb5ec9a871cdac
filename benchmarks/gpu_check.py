"""GPU check (issue 14): how far each training path is from the hardware limit, in one call of at most
eight minutes (``bash benchmarks/gpu_check.sh``).

Cases, in priority order (a case that would start after ``--budget-s`` seconds is recorded as skipped):

1. every semi-supervised method at the published size (V-Net width 16, 112×112×80, batch 2 labeled +
   2 unlabeled; supervised: the 2 labeled) in ``fp32``, ``bf16`` (autocast), ``channels_last``
   (channels-last-3d weights and input, fp32);
2. SparK ResNet-50 at 224², batch 64, bf16 autocast (forward + backward + LAMB step);
3. sliding-window inference of CORN's branch 1 over a 160×160×96 volume: one window at a time (fp32)
   vs batches of 8 (bf16);
4. every method ``compiled`` (``nn.Module.compile`` of the V-Nets, fp32), last because compiling costs
   tens of seconds per network.

Each training case: warm-up steps, then timed steps (CUDA-synchronised); iterations / s, achieved
TFLOP/s (FLOPs of one step counted once per method with ``FlopCounterMode``) next to the device's
datasheet peak, peak allocated memory. Results go to ``gpu_check.json`` after every case (a timeout
keeps what was measured) and to ``gpu_check.md`` at the end.

``--tiny`` runs the same logic on the CPU at toy sizes (width 4, 16³ patches, ResNet-18 at 64², the
``eager`` compile backend) in well under a minute: the test suite uses it; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import _limits as L  # noqa: E402

METHODS = C.METHODS
TRAIN_VARIANTS = ("fp32", "bf16", "channels_last")
TIMING_ITERATION = 7000


@dataclass(frozen=True)
class Settings:
    """Sizes and repetitions of one run."""

    device: str
    width: int
    patch: tuple[int, int, int]
    spark: tuple[str, int, int]          # backbone, image size, batch
    volume: tuple[int, int, int]         # inference volume
    stride: tuple[int, int, int]
    inference_batch: int
    warmup: int
    iters: int
    compile_backend: str


FULL = Settings(device="cuda", width=16, patch=(112, 112, 80), spark=("resnet50", 224, 64), volume=(160, 160, 96),
                stride=(18, 18, 4), inference_batch=8, warmup=3, iters=10, compile_backend="inductor")
TINY = Settings(device="cpu", width=4, patch=(16, 16, 16), spark=("resnet18", 64, 2), volume=(32, 32, 16),
                stride=(16, 16, 16), inference_batch=2, warmup=1, iters=1, compile_backend="eager")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _autocast(device: Any, bf16: bool) -> Any:
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _timed_loop(step: Any, device: Any, warmup: int, iters: int) -> float:
    """Seconds per call of ``step`` over ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def _rates(flops: int | None, seconds: float, peak: float | None) -> dict[str, Any]:
    achieved = None if flops is None else flops / seconds
    return {"sec_per_iter": seconds, "iter_per_sec": 1.0 / seconds,
            "tflops": None if achieved is None else achieved / 1e12,
            "fraction_of_peak": None if achieved is None or not peak else achieved / peak}


def train_case(name: str, variant: str, s: Settings, flops_cache: dict[str, int], peaks: dict[str, Any]) -> dict:
    """One method in one variant (fp32 / bf16 / channels_last / compiled)."""
    import torch

    from medssl.methods import create_method
    from medssl.methods.base import log_values
    from medssl.runtime.fast_paths import compile_networks, to_channels_last
    from speed_semi import make_batch, method_settings

    device = torch.device(s.device)
    torch.manual_seed(0)
    batch = make_batch(s.patch, 2, 0 if name == "supervised" else 2, device)
    method = create_method(name, method_settings(name, s.width, 4)).to(device).train()
    if variant == "channels_last":
        to_channels_last(method)
        batch.image = batch.image.contiguous(memory_format=torch.channels_last_3d)
    compiled = compile_networks(method, backend=s.compile_backend) if variant == "compiled" else []
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    counter = iter(range(TIMING_ITERATION, TIMING_ITERATION + 10**6))
    last: dict[str, Any] = {}

    def step() -> None:
        it = next(counter)
        with _autocast(device, variant == "bf16"):
            out = method.training_step(batch, it)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        method.after_optimizer_step(it)
        last["logs"] = out.logs

    if name not in flops_cache:
        flops_cache[name] = L.count_flops(step)
    _reset_peak(device)
    t0 = time.perf_counter()
    seconds = _timed_loop(step, device, s.warmup, s.iters)
    peak = peaks["bf16"] if variant == "bf16" else peaks["fp32"]
    return {"case": "train", "method": name, "variant": variant, "batch": f"2+{batch.image.shape[0] - 2}",
            **_rates(flops_cache[name], seconds, peak),
            "gflop_per_iter": flops_cache[name] / 1e9, "peak_mem_gib": _peak_gib(device),
            "wall_s": time.perf_counter() - t0, "compiled": compiled, "logs": log_values(last["logs"])}


def spark_case(s: Settings, peaks: dict[str, Any]) -> dict:
    """SparK step (mask draw, forward + backward, clip, LAMB), bf16 autocast on a GPU."""
    import torch

    from speed_pretrain import _build, _step_fn, make_batch

    backbone, size, batch = s.spark
    device = torch.device(s.device)
    images, rois = make_batch(2, (size, size), batch, device)
    torch.manual_seed(0)
    model = _build(backbone, 2, None, 16, device)
    precision = "bf16" if device.type == "cuda" else "32"
    step = _step_fn(model, images, rois, "random", device, precision)
    flops = L.count_flops(step)
    _reset_peak(device)
    seconds = _timed_loop(step, device, s.warmup, s.iters)
    peak = peaks["bf16"] if precision == "bf16" else peaks["fp32"]
    return {"case": "spark", "method": f"spark_{backbone}_{size}", "variant": precision, "batch": f"{batch} images",
            **_rates(flops, seconds, peak), "gflop_per_iter": flops / 1e9, "images_per_sec": batch / seconds,
            "peak_mem_gib": _peak_gib(device)}


def inference_case(s: Settings) -> dict:
    """CORN branch 1: one window at a time (fp32) vs batched bf16 windows, the same windows."""
    import torch

    from medssl.engine.inference import plain_sliding_window_predict, sliding_window_predict
    from medssl.methods import create_method
    from speed_semi import method_settings

    device = torch.device(s.device)
    torch.manual_seed(0)
    net = create_method("corn", method_settings("corn", s.width, 4)).segmentation_network().to(device).eval()
    image = torch.randn(s.volume, generator=torch.Generator().manual_seed(1))
    runs = {"one_at_a_time_fp32": lambda: plain_sliding_window_predict(net, image, s.patch, s.stride, device=device),
            f"batch{s.inference_batch}_bf16": lambda: sliding_window_predict(
                net, image, s.patch, s.stride, batch_size=s.inference_batch, precision="bf16", device=device)}
    seconds = {}
    for label, fn in runs.items():
        _reset_peak(device)
        seconds[label] = _timed_loop(fn, device, 1, 1 if device.type == "cpu" else 3)
    return {"case": "inference", "method": "corn_branch1", "variant": "sliding_window", "volume": list(s.volume),
            "seconds": seconds, "speedup": seconds["one_at_a_time_fp32"] / seconds[f"batch{s.inference_batch}_bf16"]}


def plan(methods: tuple[str, ...] = METHODS) -> list[tuple[str, tuple]]:
    """The cases in priority order: (kind, arguments); compiled runs CORN and dual_branch first."""
    cases: list[tuple[str, tuple]] = [("train", (m, v)) for v in TRAIN_VARIANTS for m in methods]
    cases += [("spark", ()), ("inference", ())]
    first = [m for m in ("corn", "dual_branch") if m in methods]
    cases += [("train", (m, "compiled")) for m in first + [m for m in methods if m not in first]]
    return cases


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=C.REPO, check=False).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def run(s: Settings, out_dir: Path, budget_s: float, tiny: bool, methods: tuple[str, ...] = METHODS
        ) -> dict[str, Any]:
    """Run every case that fits in ``budget_s``; write ``gpu_check.json`` after each and the table at the end."""
    import torch

    device = torch.device(s.device)
    peaks = L.device_peaks(s.device)
    data: dict[str, Any] = {
        "benchmark": "gpu_check", "tiny": tiny, "settings": asdict(s), "budget_s": budget_s, "commit": _commit(),
        "environment": C.environment(torch.get_num_threads(), s.device), "peaks": peaks,
        "required_iterations_per_s": L.required_rate(L.PROTOCOL_ITERATIONS["corn"]), "results": [], "skipped": []}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "gpu_check.json"
    flops_cache: dict[str, int] = {}
    t_start = time.perf_counter()
    for kind, args in plan(methods):
        label = f"{kind} {' '.join(args)}".strip()
        if data["results"] and time.perf_counter() - t_start > budget_s:  # the first case always runs
            data["skipped"].append(label)
            continue
        try:
            if kind == "train":
                result = train_case(args[0], args[1], s, flops_cache, peaks)
            elif kind == "spark":
                result = spark_case(s, peaks)
            else:
                result = inference_case(s)
        except Exception as err:  # noqa: BLE001 - one failing case must not lose the others
            result = {"case": kind, "method": args[0] if args else kind, "variant": args[1] if len(args) > 1 else "",
                      "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
        data["results"].append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "logs"}), flush=True)
        json_path.write_text(json.dumps(data, indent=2))
    data["seconds_total"] = time.perf_counter() - t_start
    json_path.write_text(json.dumps(data, indent=2))
    (out_dir / "gpu_check.md").write_text(render(data) + "\n")
    return data


def _fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def render(data: dict[str, Any]) -> str:
    """The markdown table of a run."""
    env, s = data["environment"], data["settings"]
    peaks = data["peaks"]
    title = "GPU check" + (" — TINY CPU dry run (numbers mean nothing)" if data["tiny"] else "")
    lines = [f"# {title}", "",
             f"Command: `bash benchmarks/gpu_check.sh`{' (`--tiny`)' if data['tiny'] else ''}; commit "
             f"`{data['commit']}`, {env['date_utc']} UTC, device `{env['device']}` ({env.get('gpu', env['processor'])}), "
             f"torch {env['torch']}. Peaks: fp32 {_fmt((peaks['fp32'] or 0) / 1e12 or None, 3)} TFLOP/s, bf16 "
             f"{_fmt((peaks['bf16'] or 0) / 1e12 or None, 0)} TFLOP/s ({peaks['source']}). FLOPs per step from "
             "`FlopCounterMode` (convolutions and matrix products, forward + backward). The published CORN protocol "
             f"(15 000 iterations) needs {data['required_iterations_per_s']:.0f} iterations / s for 10 minutes.", "",
             f"Training: V-Net width {s['width']}, {'×'.join(map(str, s['patch']))}, batch 2 + 2, {s['warmup']} "
             f"warm-up + {s['iters']} timed steps per case.", ""]
    rows = []
    for r in data["results"]:
        if r["case"] == "inference":
            continue
        if "error" in r:
            rows.append([r["method"], r["variant"], "error", r["error"], "", "", "", ""])
            continue
        rows.append([r["method"], r["variant"], _fmt(r["iter_per_sec"], 2), _fmt(r["gflop_per_iter"], 0),
                     _fmt(r["tflops"], 2), "—" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:.1%}",
                     _fmt(r["peak_mem_gib"], 2), r["batch"]])
    lines.append(C.markdown_table(["method", "variant", "iterations / s", "GFLOP / iteration", "TFLOP/s",
                                   "of peak", "peak memory (GiB)", "batch"], rows))
    for r in data["results"]:
        if r["case"] == "inference" and "error" not in r:
            secs = ", ".join(f"{k} {v:.3f} s" for k, v in r["seconds"].items())
            lines += ["", f"Sliding-window inference over {'×'.join(map(str, r['volume']))}: {secs} "
                      f"(batched bf16 {r['speedup']:.2f}× the one-at-a-time fp32 loop)."]
    if data["skipped"]:
        lines += ["", f"Skipped (time budget of {data['budget_s']:.0f} s reached): {', '.join(data['skipped'])}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", type=Path, default=C.RESULTS, help="output folder (default benchmarks/results)")
    p.add_argument("--tiny", action="store_true", help="CPU dry run at toy sizes (tests the logic only)")
    p.add_argument("--budget-s", type=float, default=None, help="no case starts after this (default 420; tiny 120)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = p.parse_args(argv)
    import torch

    settings = TINY if args.tiny else FULL
    if not args.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --tiny for a CPU dry run)", file=sys.stderr)
        return 2
    if args.tiny:
        C.set_threads(1)
    budget = args.budget_s if args.budget_s is not None else (120.0 if args.tiny else 420.0)
    run(settings, args.out, budget, args.tiny, tuple(m for m in METHODS if m in args.methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
