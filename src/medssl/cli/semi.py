"""``medssl semi``: semi-supervised 3D segmentation (CORN and its baselines)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Semi-supervised 3D segmentation: train, evaluate, predict.", no_args_is_help=True)


@app.command("methods")
def list_methods() -> None:
    """List the available semi-supervised methods."""
    from medssl.methods import METHODS

    for name in sorted(METHODS):
        typer.echo(name)
