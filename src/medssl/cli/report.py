"""``medssl report``: one HTML or markdown page over run directories.

Thin layer over :func:`medssl.report.build_report`.
"""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    runs: list[Path] = typer.Argument(..., help="Run directories (semi, pretrain, finetune, localize caches; "
                                      "any other run is shown from what it holds)."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o",
                             help="Report file: .html (one self-contained page) or .md (+ <stem>_files/ images)."),
    title: str | None = typer.Option(None, "--title", help="Page title (default: medssl report: <run names>)."),
    fmt: str | None = typer.Option(None, "--format", help="html | md (default: from the --out suffix)."),
    smooth: float = typer.Option(0.0, "--smooth", help="Learning-curve smoothing: exponential moving average "
                                 "factor in [0, 1) (0: raw values)."),
) -> None:
    """One-page report over run directories: config, manifest, metric tables, learning curves, figures."""
    from medssl.report import build_report

    path = build_report(runs, out, title=title, fmt=fmt, smoothing=smooth)  # type: ignore[arg-type]
    typer.echo(f"report: {path}")
