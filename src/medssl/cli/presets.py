"""``medssl presets [GROUP]``: the packaged YAML presets, one line each."""

from __future__ import annotations

import typer


def presets(
    group: str | None = typer.Argument(None, help="semi | pretrain | finetune (default: all groups)."),
) -> None:
    """List the packaged presets (``--config NAME`` of the training commands) with one line each."""
    from medssl.errors import MedsslInputError
    from medssl.presets import PRESET_GROUPS, list_presets

    if group is not None and group not in PRESET_GROUPS:
        raise MedsslInputError(group, f"unknown preset group; expected one of {', '.join(PRESET_GROUPS)}")
    for name in (group,) if group is not None else PRESET_GROUPS:
        for preset in list_presets(name):
            typer.echo(f"{preset.group}/{preset.name}  {preset.description}")
