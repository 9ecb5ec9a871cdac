"""Command groups whose implementation is planned but not yet part of medssl.

Each command says so plainly and exits with code 1 instead of pretending to work.
"""

from __future__ import annotations

import typer

_PLANNED = {
    "pretrain": "masked image modeling pretraining (SparK, random and text-guided masking, 2D and 3D)",
    "finetune": "fine-tuning of pretrained encoders (classification, Mask R-CNN detection)",
}


def not_yet(group: str) -> None:
    typer.echo(f"medssl {group}: {_PLANNED[group]} is not available in this version yet.", err=True)
    raise typer.Exit(1)


def planned_group(group: str) -> typer.Typer:
    sub = typer.Typer(help=f"[planned] {_PLANNED[group]}.", no_args_is_help=False,
                      invoke_without_command=True)

    @sub.callback(invoke_without_command=True)
    def _cb() -> None:
        not_yet(group)

    return sub
