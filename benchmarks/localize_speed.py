"""Localization speed: images per second of each backend at real model sizes, and the ROI-cache speed-up.

Backends (random weights: the architectures and sizes of the real models, no downloads):

* ``biomedclip-sam``: an open_clip model with the BiomedCLIP image tower (timm ViT-B/16, 224 × 224) and a
  BERT-base-sized text tower (open_clip's own transformer, width 768, 12 layers, context 256: the
  PubMedBERT tower needs a hub config), M2IB at layer 9 (10 Adam steps on a batch of 10), then SAM with
  the ``SamConfig()`` defaults (ViT-B image encoder, 1024 × 1024 input) on the box prompts;
* ``clipseg``: ``CLIPSegConfig()`` defaults with ViT-B/16 patches (the rd64 checkpoints' image tower) at
  the processor's 352 × 352 input, reduce dim 64, no SAM (the backend's default);
* ``structures``: the real all-MiniLM-L6-v2 sentence encoder on synthesized cases.

2D images: synthesized ``brain2d`` cases (128 × 128, MNI152 anatomy); ``structures`` also runs on an
``atrium3d`` volume (96 × 96 × 64). Per backend: warm-up call(s), then the median seconds per image over
``--images`` images; images/s = 1 / median. Cache: after ``RoiCache.put`` of one result, the median of
``--gets`` ``RoiCache.get`` calls (after one warm-up get) against the median compute time; the target is a
speed-up of at least 100×.

``--quick``: tiny configs, one small image per backend, results under ``benchmarks/results/raw/quick/``.

Regenerate: ``.venv/bin/python benchmarks/localize_speed.py`` (writes
``benchmarks/results/localize_speed.{json,md}``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

CACHE_TARGET = 100.0
BRAIN_PROMPT = "a brain MRI showing a suspicious irregular mass suggestive of a tumour"
ATRIUM_PROMPT = "A cardiac MRI highlighting the left atrium"

#: Model configurations: ``real`` = the published sizes, ``quick`` = tiny smoke-run sizes.
CLIP_CFG: dict[str, dict[str, Any]] = {
    "real": {"embed_dim": 512,
             "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                            "timm_pool": "", "timm_proj": "linear", "image_size": 224},
             "text_cfg": {"context_length": 256, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12}},
    "quick": {"embed_dim": 16,
              "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                             "timm_proj": "linear", "image_size": 64},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
}
SAM_CFG: dict[str, dict[str, Any]] = {
    "real": {},
    "quick": {"vision_config": {"hidden_size": 32, "output_channels": 32, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "image_size": 64, "patch_size": 8, "window_size": 4,
                                "global_attn_indexes": [1], "num_pos_feats": 16, "mlp_dim": 64},
              "prompt_encoder_config": {"hidden_size": 32, "image_size": 64, "patch_size": 8,
                                        "mask_input_channels": 4},
              "mask_decoder_config": {"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2,
                                      "iou_head_hidden_dim": 32}},
}
CLIPSEG_CFG: dict[str, dict[str, Any]] = {
    "real": {"vision_config": {"patch_size": 16}},
    "quick": {"text_config": {"vocab_size": 60, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0,
                              "eos_token_id": 1, "pad_token_id": 1},
              "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                                "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
              "projection_dim": 16, "reduce_dim": 16, "extract_layers": [1, 2], "decoder_num_attention_heads": 2,
              "decoder_intermediate_size": 32},
}
SIZES: dict[str, dict[str, Any]] = {
    "real": {"sam_input": 1024, "clipseg_input": 352, "brain2d": (128, 128), "atrium3d": (96, 96, 64)},
    "quick": {"sam_input": 64, "clipseg_input": 32, "brain2d": (48, 48), "atrium3d": (32, 32, 24)},
}


# ------------------------------------------------------------------------------------------ builders
def build_biomedclip_sam(size: str) -> Any:
    """BiomedCLIP-size open_clip model + SAM with random weights, wrapped as the ``biomedclip-sam`` backend."""
    import open_clip
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    from medssl.localize.biomedclip_sam import BiomedClipSamLocalizer

    torch.manual_seed(0)
    cfg = CLIP_CFG[size]
    clip = open_clip.CLIP(**cfg)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    preprocess = open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)
    sam = SamModel(SamConfig(**SAM_CFG[size]))
    s, m = SIZES[size]["sam_input"], SIZES[size]["sam_input"] // 4
    processor = SamProcessor(SamImageProcessor(size={"longest_edge": s}, pad_size={"height": s, "width": s},
                                               mask_size={"longest_edge": m}, mask_pad_size={"height": m, "width": m}))
    layer = 9 if size == "real" else 3
    return BiomedClipSamLocalizer.from_modules(clip, tokenizer, preprocess, sam, processor, layer=layer,
                                               model_id=f"random-{size}-biomedclip", model_revision="seed0",
                                               sam_model_id=f"random-{size}-sam", sam_revision="seed0")


def build_clipseg(size: str, scratch: Path) -> Any:
    """CLIPSeg with random weights (tokenizer: a minimal vocabulary; the text tower's size is unchanged)."""
    import torch
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        CLIPTokenizer,
        ViTImageProcessor,
    )

    from medssl.localize.clipseg import ClipSegLocalizer

    torch.manual_seed(0)
    model = CLIPSegForImageSegmentation(CLIPSegConfig(**CLIPSEG_CFG[size]))
    vocab = ["<|startoftext|>", "<|endoftext|>", *"abcdefghijklmnopqrstuvwxyz",
             *(c + "</w>" for c in "abcdefghijklmnopqrstuvwxyz")]
    (scratch / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (scratch / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(scratch / "vocab.json"), str(scratch / "merges.txt"))
    s = SIZES[size]["clipseg_input"]
    images = ViTImageProcessor(size={"height": s, "width": s}, image_mean=[0.481, 0.458, 0.408],
                               image_std=[0.269, 0.261, 0.276])
    return ClipSegLocalizer.from_modules(model, CLIPSegProcessor(image_processor=images, tokenizer=tokenizer),
                                         model_id=f"random-{size}-clipseg", model_revision="seed0")


def cases(size: str, n: int, scratch: Path) -> dict[str, list[tuple[Any, dict[str, Any]]]]:
    """Synthesized brain2d images and one atrium3d volume, each with the structures-backend context."""
    from medssl.data.io import read_image
    from medssl.data.synthetic import synthesize

    out: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    for name, count in (("brain2d", max(n, 2)), ("atrium3d", 2)):
        root = synthesize(name, scratch / name, n=count, seed=0, shape=SIZES[size][name])
        images = sorted((root / "images").iterdir())[: (n if name == "brain2d" else 1)]
        out[name] = [(read_image(p), {}) for p in images]
    return out


# ------------------------------------------------------------------------------------------- timing
def time_backend(localizer: Any, items: list[tuple[Any, dict[str, Any]]], prompt: str, warmup: int,
                 cache_root: Path, gets: int) -> dict[str, Any]:
    """Median seconds per image, images/s, and the cache get time against the compute time."""
    from medssl.localize import RoiCache

    for _ in range(warmup):
        localizer.localize(items[0][0], prompt, items[0][1])
    seconds, results = [], []
    for image, context in items:
        t0 = time.perf_counter()
        results.append(localizer.localize(image, prompt, context))
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    cache = RoiCache(cache_root)
    image = items[0][0]
    cache.put(image, prompt, localizer, results[0])
    if cache.get(image, prompt, localizer) is None:  # warm-up get (first image read imports the readers)
        raise RuntimeError("the cache entry just written was not found")
    get_seconds = []
    for _ in range(gets):
        t0 = time.perf_counter()
        cache.get(image, prompt, localizer)
        get_seconds.append(time.perf_counter() - t0)
    get_median = statistics.median(get_seconds)
    return {"images": len(items), "shape": list(image.spatial_shape), "seconds": seconds, "median_s": median,
            "images_per_s": 1.0 / median, "cache_get_median_s": get_median, "cache_speedup": median / get_median,
            "roi_fraction": [float(r.roi.mean()) for r in results],
            "empty_at": [r.provenance.get("empty_at") for r in results]}


# ------------------------------------------------------------------------------------------- report
def render(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = [f"# Localization speed{' (QUICK smoke run)' if data['quick'] else ''}", "",
             f"Command: `{data['command']}`.",
             f"Machine: {env['processor']}, device `{env['device']}`, {env['threads']} torch thread(s), torch "
             f"{env['torch']}, {env['date_utc']} UTC. Models have random weights at the sizes below (no "
             "downloads); speed does not depend on the weights' values. Absolute seconds depend on the machine "
             "and its load; compare ratios measured in one run.", ""]
    rows = []
    for r in data["rows"]:
        rows.append([r["backend"], r["model"], "×".join(map(str, r["shape"])), r["images"], f"{r['median_s']:.3f}",
                     f"{r['images_per_s']:.3g}", f"{r['cache_get_median_s'] * 1000:.2f}",
                     f"{r['cache_speedup']:.0f}×"])
    lines.append(C.markdown_table(["backend", "model size", "image", "images timed", "median s / image",
                                   "images / s", "cache get (ms)", "cache speed-up"], rows))
    lines += ["", "Cache speed-up = median compute time / median `RoiCache.get` time "
              f"(target ≥ {CACHE_TARGET:.0f}×).", "", "Reading:", ""] + [f"- {n}" for n in data["notes"]]
    return "\n".join(lines)


def notes(data: dict[str, Any]) -> list[str]:
    out = []
    rows = {r["backend"]: r for r in data["rows"]}
    for name, r in rows.items():
        verdict = "meets" if r["cache_speedup"] >= CACHE_TARGET else "misses"
        out.append(f"{name}: {r['images_per_s']:.3g} images/s; a cache hit is {r['cache_speedup']:.0f}× faster than "
                   f"computing ({verdict} the {CACHE_TARGET:.0f}× target).")
    if "biomedclip-sam" in rows and "clipseg" in rows:
        ratio = rows["biomedclip-sam"]["median_s"] / rows["clipseg"]["median_s"]
        out.append(f"biomedclip-sam (M2IB: 10 optimisation steps on a batch of 10, then SAM) costs {ratio:.1f}× "
                   "clipseg (one forward pass) per image.")
    if data["quick"]:
        out.append("QUICK smoke run: tiny models and images; the numbers only show that the benchmark works.")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models, one small image per backend")
    p.add_argument("--images", type=int, default=None, help="images timed per backend (default 3; quick 1)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per backend (default 1; quick 1)")
    p.add_argument("--gets", type=int, default=20, help="timed cache reads per backend")
    p.add_argument("--backends", nargs="+", default=["biomedclip-sam", "clipseg", "structures", "structures-3d"],
                   choices=["biomedclip-sam", "clipseg", "structures", "structures-3d"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1: see _common.DEFAULT_THREADS)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results)")
    args = p.parse_args(argv)
    size = "quick" if args.quick else "real"
    n_images = args.images if args.images is not None else (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else 1
    command = C.regenerate_command("localize_speed.py", argv)
    C.say(f"regenerate with: {command}")
    threads = C.set_threads(args.threads)
    t_start = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="localize_speed_"))
    rows: list[dict[str, Any]] = []
    try:
        data_cases = cases(size, n_images, scratch)
        for backend in args.backends:
            C.say(f"{backend}: building")
            if backend == "biomedclip-sam":
                loc, model = build_biomedclip_sam(size), ("ViT-B/16 224 + BERT-base-size text + SAM ViT-B 1024"
                                                          if size == "real" else "tiny")
                items, prompt = data_cases["brain2d"], BRAIN_PROMPT
            elif backend == "clipseg":
                loc, model = build_clipseg(size, scratch), ("CLIPSeg ViT-B/16 352, reduce dim 64"
                                                            if size == "real" else "tiny")
                items, prompt = data_cases["brain2d"], BRAIN_PROMPT
            else:
                from medssl.localize.structures import StructuresLocalizer

                loc, model = StructuresLocalizer(), "all-MiniLM-L6-v2 (real weights)"
                items = data_cases["atrium3d" if backend == "structures-3d" else "brain2d"]
                prompt = ATRIUM_PROMPT if backend == "structures-3d" else BRAIN_PROMPT
            C.say(f"{backend}: timing {len(items)} image(s) after {warmup} warm-up call(s)")
            row = time_backend(loc, items, prompt, warmup, scratch / f"cache-{backend}", args.gets)
            row.update(backend=backend, model=model)
            rows.append(row)
            C.say(f"{backend}: {row['median_s']:.3f} s/image, {row['images_per_s']:.3g} images/s, cache hit "
                  f"{row['cache_speedup']:.0f}x faster")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    data: dict[str, Any] = {"benchmark": "localize_speed", "quick": args.quick, "command": command,
                            "environment": C.environment(threads, "cpu"), "cache_target": CACHE_TARGET,
                            "settings": {"images": n_images, "warmup": warmup, "gets": args.gets,
                                         "configs": {"clip": CLIP_CFG[size], "sam": SAM_CFG[size],
                                                     "clipseg": CLIPSEG_CFG[size], "sizes": SIZES[size]}},
                            "rows": rows, "seconds_total": time.perf_counter() - t_start}
    data["notes"] = notes(data)
    out = args.out or C.results_root(args.quick)
    json_path, md_path = C.write_outputs(out, "localize_speed", data, render(data))
    C.say(f"wrote {C.rel(json_path)} and {C.rel(md_path)} in {data['seconds_total']:.0f} s")
    C.say(f"regenerate with: {command}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
