"""``medssl demo``: the main job on the embedded data."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory of the demo."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing demo directory."),
    quiet: bool = typer.Option(False, "--quiet", help="Plain log lines instead of progress bars."),
    quick: bool = typer.Option(False, "--quick", help="Check an install in about a minute: a few cases per "
                               "dataset, 1 pretraining epoch, 2 CORN iterations (numbers meaningless)."),
    seed: int | None = typer.Option(None, "--seed", help="Training seed of the pretraining and CORN runs "
                                    "(default: the presets' 1337; the embedded data stay the same)."),
) -> None:
    """Run the demo pipeline on the embedded synthetic datasets."""
    from medssl.demo import QUICK_CORN_ITERATIONS, QUICK_PRETRAIN_EPOCHS, run_demo

    if quick:
        run_demo(out, overwrite=overwrite, quiet=quiet, iterations=QUICK_CORN_ITERATIONS,
                 pretrain_epochs=QUICK_PRETRAIN_EPOCHS, quick=True, seed=seed)
    else:
        run_demo(out, overwrite=overwrite, quiet=quiet, seed=seed)
