"""``medssl demo``: the main job on the embedded data."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory of the demo."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing demo directory."),
    quiet: bool = typer.Option(False, "--quiet", help="Plain log lines instead of progress bars."),
) -> None:
    """Run the demo pipeline on the embedded synthetic datasets."""
    from medssl.demo import run_demo

    run_demo(out, overwrite=overwrite, quiet=quiet)
