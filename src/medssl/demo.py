"""The demo: the whole main medssl job on the embedded data, from nothing to a report.

Steps (each one a public API call a user can make from a script):

1. synthesize the embedded datasets (``atrium3d``, ``brain2d``, ``brain3d``, ``chest2d``) and write a
   preview montage of each (:func:`medssl.data.synthetic.synthesize`);
2. localize a text prompt in each 2D/3D dataset with the offline ``structures`` backend into ROI caches,
   with overlay previews (:func:`medssl.localize.run_localization`);
3. text-guided 3D masked image modeling: SparK on a V-Net encoder over the atrium3d volumes, the left
   atrium's ROI masked at 0.8 and the background at 0.4 (:func:`medssl.engine.pretrain.train_pretrain`),
   and export of the encoder (:func:`medssl.engine.pretrain.export_encoder`);
4. CORN on ``atrium3d`` with the CPU preset, both branches initialised from the pretrained encoder
   (:func:`medssl.engine.semi.train_semi`);
5. evaluation of the final checkpoint on the held-out test volumes (Dice, Jaccard, 95HD, ASD) with
   overlays (:func:`medssl.engine.semi.evaluate_run`);
6. a one-page HTML report over the ROI cache and both runs (:func:`medssl.report.build_report`) and
   ``SUMMARY.md`` listing every product.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medssl.errors import MedsslInputError

#: (dataset, number of cases, image size or None for the dataset's default) synthesized by the demo;
#: atrium3d at 64x64x48 voxels (1.875 mm) to match the CPU presets in semi presets atrium3d_*.
DEMO_DATASETS: tuple[tuple[str, int, tuple[int, ...] | None], ...] = (
    ("atrium3d", 16, (64, 64, 48)), ("brain2d", 24, None), ("brain3d", 4, None), ("chest2d", 24, None))
#: Smaller case counts of ``run_demo(quick=True)`` (tests): just enough for every step to run.
QUICK_COUNTS = {"atrium3d": 10, "brain2d": 4, "brain3d": 2, "chest2d": 4}
#: Training lengths of ``medssl demo --quick`` (an install check, not a result).
QUICK_CORN_ITERATIONS = 2
QUICK_PRETRAIN_EPOCHS = 1
#: (dataset, prompt) localized with the ``structures`` backend; atrium3d's ROI guides the pretraining.
DEMO_PROMPTS: tuple[tuple[str, str], ...] = (
    ("atrium3d", "A cardiac MRI highlighting the left atrium"),
    ("chest2d", "A chest X-ray highlighting both left and right lungs"),
    ("brain2d", "A brain MRI showing a suspicious irregular mass suggestive of a tumour"),
)
DEMO_SEED = 0
#: Training seed of the demo's pretraining and CORN runs (the presets' seed).
DEFAULT_TRAINING_SEED = 1337
#: CORN's Dice on the held-out atrium3d volumes over training seeds, as measured by
#: ``benchmarks/demo_seeds.py`` (``benchmarks/results/demo_seeds.md``): (seeds, mean %, sample std %),
#: or None before it has been measured.
MEASURED_SEED_SPREAD: tuple[tuple[int, ...], float, float] | None = ((1337, 1338, 1339), 41.6, 3.5)


@dataclass
class DemoResult:
    """Where the demo wrote what, and how long each step took (seconds)."""

    root: Path
    datasets: dict[str, Path] = field(default_factory=dict)
    previews: dict[str, Path] = field(default_factory=dict)
    roi_caches: dict[str, Path] = field(default_factory=dict)
    localization: dict[str, str] = field(default_factory=dict)
    roi_previews: list[Path] = field(default_factory=list)
    pretrain_run: Path | None = None
    encoder: Path | None = None
    encoder_check: str | None = None
    reconstructions: list[Path] = field(default_factory=list)
    seed: int = 1337
    semi_run: Path | None = None
    init_report: dict[str, Any] | None = None
    evaluation_md: Path | None = None
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def _prepare_root(out: Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise MedsslInputError(out, "demo folder already exists and is not empty; pass --overwrite to replace it")
        if not (out / "SUMMARY.md").exists() and not (out / "data").exists():
            raise MedsslInputError(out, "refusing to overwrite: the folder does not look like a medssl demo")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _first_case(root: Path) -> tuple[Path, Path | None]:
    images = sorted((root / "images").iterdir())
    if not images:
        raise MedsslInputError(root, "no images were synthesized")
    image = images[0]
    label = root / "labels" / image.name
    return image, (label if label.exists() else None)


class _Timer:
    """Times the demo's steps into ``seconds``."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        out = fn()
        self.seconds[name] = time.monotonic() - t0
        return out


def run_demo(out: str | Path = "runs/demo", overwrite: bool = False, quiet: bool = False,
             iterations: int | None = None, pretrain_epochs: int | None = None, quick: bool = False,
             seed: int | None = None) -> DemoResult:
    """Run the demo into ``out``; returns what was written.

    Args:
        out: demo folder (refused when it exists, unless ``overwrite``).
        overwrite: replace an existing demo folder.
        quiet: plain log lines instead of progress bars.
        iterations: override the CORN preset's training length (tests use a handful).
        pretrain_epochs: override the pretraining preset's epochs (tests use one).
        quick: synthesize only a few cases per dataset (:data:`QUICK_COUNTS`; tests).
        seed: training seed of the pretraining and of CORN (default: the presets' seed,
            :data:`DEFAULT_TRAINING_SEED`); the embedded data stay the same (:data:`DEMO_SEED`).
    """
    root = _prepare_root(Path(out), overwrite)
    result = DemoResult(root=root, seed=DEFAULT_TRAINING_SEED if seed is None else int(seed))
    timed = _Timer(result.seconds)
    timed("synthesize", lambda: _synthesize(result, quiet, quick))
    timed("localize", lambda: _localize(result, quiet))
    timed("pretrain", lambda: _pretrain(result, quiet, pretrain_epochs))
    timed("train_corn", lambda: _train_corn(result, quiet, iterations))
    timed("evaluate", lambda: _evaluate(result, quiet))
    timed("report", lambda: _report(result))
    _write_summary(result)
    print(f"[demo] done: see {root / 'SUMMARY.md'} and {result.report}")
    return result


def _synthesize(result: DemoResult, quiet: bool, quick: bool) -> None:
    from medssl.data.preview import write_preview
    from medssl.data.synthetic import synthesize

    for name, n, shape in DEMO_DATASETS:
        n = QUICK_COUNTS[name] if quick else n
        ds_root = synthesize(name, result.root / "data" / name, n=n, seed=DEMO_SEED, shape=shape, quiet=quiet)
        result.datasets[name] = ds_root
        image, label = _first_case(ds_root)
        result.previews[name] = write_preview(image, result.root / "figures" / f"{name}_preview.png", label=label)
        print(f"[demo] {name}: {n} cases -> {ds_root}")


def _localize(result: DemoResult, quiet: bool) -> None:
    from medssl.localize.run import LocalizeRunConfig, run_localization

    for name, prompt in DEMO_PROMPTS:
        cache = result.root / "roi" / name
        summary = run_localization(LocalizeRunConfig(data=[result.datasets[name]], prompt=prompt,
                                                     backend="structures", cache=cache, preview=2, quiet=quiet))
        if summary.failed:
            file, message = summary.failed[0]
            raise MedsslInputError(file, f"localization failed: {message}")
        result.roi_caches[name] = cache
        result.roi_previews.extend(Path(p) for p in summary.previews)
        result.localization[name] = (f"{summary.images} images, prompt \"{prompt}\", mean ROI fraction "
                                     f"{summary.mean_roi_fraction:.3f}, {summary.empty_rois} empty")
        print(f"[demo] localized {name}: {result.localization[name]}")


def _preset(name: str, group: str) -> Path:
    """The packaged preset the demo trains with (present in every install)."""
    from medssl.presets import preset_path

    path = preset_path(name, group)
    if path is None:
        raise RuntimeError(f"the packaged preset {group}/{name} is missing from this medssl install")
    return path


def _pretrain(result: DemoResult, quiet: bool, epochs: int | None) -> None:
    from medssl.config import load_config
    from medssl.engine.pretrain import PretrainConfig, train_pretrain
    from medssl.engine.pretrain_export import export_encoder_checked

    cfg = load_config(PretrainConfig, _preset("atrium3d_vnet_guided", "pretrain"),
                      base={"runtime": {"name": "mwm_atrium3d"}})
    cfg.runtime.runs_root, cfg.runtime.quiet, cfg.runtime.seed = result.root / "runs", quiet, result.seed
    cfg.data.folder = result.datasets["atrium3d"]
    cfg.data.roi_cache = result.roi_caches["atrium3d"]
    if epochs is not None:
        cfg.optim.epochs = epochs
        cfg.optim.warmup_epochs = min(cfg.optim.warmup_epochs, max(epochs - 1, 0))
    trained = train_pretrain(cfg, command=["medssl", "demo"])
    result.pretrain_run = trained.run_dir
    result.reconstructions = sorted((trained.run_dir / "figures").glob("*.png"))
    export = export_encoder_checked(trained.run_dir, "vnet", result.root / "encoders" / "vnet8_mwm_atrium3d.pt")
    result.encoder, result.encoder_check = export.path, export.check
    print(f"[demo] pretrained encoder -> {export.path} ({export.check})")


def _train_corn(result: DemoResult, quiet: bool, iterations: int | None) -> None:
    from medssl.config import load_config
    from medssl.engine.semi import SemiTrainConfig, train_semi

    cfg = load_config(SemiTrainConfig, _preset("atrium3d_corn", "semi"),
                      base={"runtime": {"name": "corn_atrium3d"}})
    cfg.runtime.runs_root, cfg.runtime.quiet, cfg.runtime.seed = result.root / "runs", quiet, result.seed
    cfg.data.spec = f"folder:{result.datasets['atrium3d']}"
    cfg.evaluate_after = False  # evaluated below on the held-out test volumes
    cfg.init_encoder = result.encoder
    if iterations is not None:
        cfg.max_iterations = iterations
    trained = train_semi(cfg, command=["medssl", "demo"])
    result.semi_run = trained.run_dir
    result.init_report = trained.init_report


def _evaluate(result: DemoResult, quiet: bool) -> None:
    from medssl.engine.semi import evaluate_run

    assert result.semi_run is not None
    evaluation = evaluate_run(result.semi_run, cases=result.datasets["atrium3d"] / "test.list", quiet=quiet)
    result.evaluation_md = evaluation.files.get("summary_md")


def _report(result: DemoResult) -> None:
    from medssl.report import build_report

    runs = [result.roi_caches["atrium3d"], result.pretrain_run, result.semi_run]
    result.report = build_report([r for r in runs if r is not None], result.root / "report.html",
                                 title="medssl demo: text-guided 3D pretraining, then CORN on atrium3d")


def reproducibility_note(seed: int) -> str:
    """What the demo's CORN numbers mean: one training seed, the measured spread over seeds, and why
    another machine may differ."""
    if MEASURED_SEED_SPREAD is None:
        spread = "its spread over training seeds has not been measured yet (`benchmarks/demo_seeds.py`)"
    else:
        seeds, mean, std = MEASURED_SEED_SPREAD
        spread = (f"over training seeds {', '.join(map(str, seeds))} this step gave {mean:.1f} ± {std:.1f} % Dice "
                  "(mean ± sample std of the per-run means; `benchmarks/results/demo_seeds.md`)")
    return (f"These numbers come from one training seed ({seed}; `medssl demo --seed N` for another); {spread}. "
            "The ± in the table is the spread over the test volumes, not over seeds. The same command on the "
            "same machine gives identical numbers; another CPU or BLAS build rounds differently, and a run this "
            "short can move by several Dice points (with earlier code one machine gave 38.7 % where another gave "
            "45.5 %).")


def _write_summary(result: DemoResult) -> None:
    from medssl.runtime.atomic import write_text_atomic

    rel = lambda p: Path(p).relative_to(result.root).as_posix()  # noqa: E731
    lines = ["# medssl demo", "", f"Report: `{rel(result.report)}` (open it in a browser)." if result.report else "",
             "", "## Embedded datasets", ""]
    for name, path in result.datasets.items():
        lines.append(f"- `{name}`: `{rel(path)}` (preview `{rel(result.previews[name])}`)")
    lines += ["", "## Localization (structures backend)", ""]
    for name, text in result.localization.items():
        lines.append(f"- `{name}`: {text}; cache `{rel(result.roi_caches[name])}`")
    lines += [f"- preview `{rel(p)}`" for p in result.roi_previews]
    lines += ["", "## Text-guided 3D pretraining (SparK, V-Net encoder, ROI 0.8 / background 0.4)", ""]
    if result.pretrain_run is not None:
        lines.append(f"- run directory: `{rel(result.pretrain_run)}`")
        lines += [f"- reconstruction preview `{rel(p)}`" for p in result.reconstructions]
    if result.encoder is not None:
        lines.append(f"- exported encoder: `{rel(result.encoder)}` ({result.encoder_check})")
    lines += ["", "## CORN on atrium3d (CPU preset, initialised from the pretrained encoder)", ""]
    if result.semi_run is not None:
        lines.append(f"- run directory: `{rel(result.semi_run)}` (config.yaml, manifest.json, metrics.csv, "
                     "checkpoints/)")
    if result.evaluation_md is not None:
        lines += ["- evaluation on the held-out test volumes (final checkpoint):", "",
                  Path(result.evaluation_md).read_text(encoding="utf-8").strip(), "",
                  reproducibility_note(result.seed), ""]
    lines += ["", "## Time (s)", ""] + [f"- {k}: {v:.1f}" for k, v in result.seconds.items()]
    write_text_atomic(result.root / "SUMMARY.md", "\n".join(lines) + "\n")
