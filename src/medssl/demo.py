"""The demo: the main medssl job on the embedded data, from nothing to an evaluation table.

Steps (each one a public API call a user can make from a script):

1. synthesize the embedded datasets (``atrium3d``, ``brain2d``, ``brain3d``, ``chest2d``) and write a
   preview montage of each;
2. train CORN on ``atrium3d`` with the CPU preset (a few labeled volumes, the rest unlabeled);
3. evaluate the final checkpoint on the held-out ``atrium3d`` test volumes (Dice, Jaccard, 95HD, ASD)
   and write overlays;
4. write ``SUMMARY.md`` listing every product.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from medssl.errors import MedsslInputError

#: (dataset, number of cases, image size or None for the dataset's default) synthesized by the demo;
#: atrium3d at 64x64x48 voxels (1.875 mm) to match the CPU presets in configs/semi/atrium3d_*.yaml.
DEMO_DATASETS: tuple[tuple[str, int, tuple[int, ...] | None], ...] = (
    ("atrium3d", 16, (64, 64, 48)), ("brain2d", 24, None), ("brain3d", 4, None), ("chest2d", 24, None))
DEMO_SEED = 0
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class DemoResult:
    """Where the demo wrote what, and how long each step took (seconds)."""

    root: Path
    datasets: dict[str, Path] = field(default_factory=dict)
    previews: dict[str, Path] = field(default_factory=dict)
    semi_run: Path | None = None
    evaluation_md: Path | None = None
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


def run_demo(out: str | Path = "runs/demo", overwrite: bool = False, quiet: bool = False,
             iterations: int | None = None) -> DemoResult:
    """Run the demo into ``out``; returns what was written.

    Args:
        out: demo folder (refused when it exists, unless ``overwrite``).
        overwrite: replace an existing demo folder.
        quiet: plain log lines instead of progress bars.
        iterations: override the CPU preset's training length (tests use a handful).
    """
    from medssl.config import load_config
    from medssl.data.preview import write_preview
    from medssl.data.synthetic import synthesize
    from medssl.engine.semi import SemiTrainConfig, train_semi

    root = _prepare_root(Path(out), overwrite)
    result = DemoResult(root=root)
    say = print

    t0 = time.monotonic()
    for name, n, shape in DEMO_DATASETS:
        ds_root = synthesize(name, root / "data" / name, n=n, seed=DEMO_SEED, shape=shape, quiet=quiet)
        result.datasets[name] = ds_root
        image, label = _first_case(ds_root)
        result.previews[name] = write_preview(image, root / "figures" / f"{name}_preview.png", label=label)
        say(f"[demo] {name}: {n} cases -> {ds_root}")
    result.seconds["synthesize"] = time.monotonic() - t0

    t0 = time.monotonic()
    cfg = load_config(SemiTrainConfig, CONFIGS_DIR / "semi" / "atrium3d_corn.yaml",
                      base={"runtime": {"name": "corn_atrium3d"}})
    cfg.runtime.runs_root, cfg.runtime.quiet = root / "runs", quiet
    cfg.data.spec = f"folder:{result.datasets['atrium3d']}"
    cfg.evaluate_after = False  # evaluated below on the held-out test volumes
    if iterations is not None:
        cfg.max_iterations = iterations
    trained = train_semi(cfg, command=["medssl", "demo"])
    result.semi_run = trained.run_dir
    result.seconds["train_corn"] = time.monotonic() - t0

    t0 = time.monotonic()
    from medssl.engine.semi import evaluate_run

    evaluation = evaluate_run(trained.run_dir, cases=result.datasets["atrium3d"] / "test.list", quiet=quiet)
    result.evaluation_md = evaluation.files.get("summary_md")
    result.seconds["evaluate"] = time.monotonic() - t0
    _write_summary(result)
    say(f"[demo] done: see {root / 'SUMMARY.md'}")
    return result


def _write_summary(result: DemoResult) -> None:
    from medssl.runtime.atomic import write_text_atomic

    rel = lambda p: Path(p).relative_to(result.root).as_posix()  # noqa: E731
    lines = ["# medssl demo", "", "## Embedded datasets", ""]
    for name, path in result.datasets.items():
        lines.append(f"- `{name}`: `{rel(path)}` (preview `{rel(result.previews[name])}`)")
    lines += ["", "## CORN on atrium3d (CPU preset)", ""]
    if result.semi_run is not None:
        lines.append(f"- run directory: `{rel(result.semi_run)}` (config.yaml, manifest.json, metrics.csv, "
                     "checkpoints/)")
    if result.evaluation_md is not None:
        lines += ["- evaluation on the held-out test volumes (final checkpoint):", "",
                  Path(result.evaluation_md).read_text(encoding="utf-8").strip(), ""]
    lines += ["", "## Time (s)", ""] + [f"- {k}: {v:.1f}" for k, v in result.seconds.items()]
    write_text_atomic(result.root / "SUMMARY.md", "\n".join(lines) + "\n")
