"""The YAML presets shipped inside the package (``medssl/configs/<group>/<name>.yaml``).

Presets are package data read through :mod:`importlib.resources`, so ``--config atrium3d_corn`` works the
same from an editable checkout and from an installed wheel::

    from medssl.presets import list_presets, preset_path
    for preset in list_presets("semi"):
        print(preset.name, preset.description)
    path = preset_path("atrium3d_corn", "semi")     # a real file, ready for medssl.config.load_config

Each preset's one-line description is its first comment line.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

from medssl import __version__

__all__ = ["PRESET_GROUPS", "Preset", "find_preset", "list_presets", "preset_path"]

#: The preset groups, one per kind of training command.
PRESET_GROUPS: tuple[str, ...] = ("semi", "pretrain", "finetune")
_SUFFIX = ".yaml"


@dataclass(frozen=True)
class Preset:
    """One packaged preset: its group, name (file name without ``.yaml``) and resource."""

    group: str
    name: str
    resource: Traversable

    @property
    def text(self) -> str:
        """The preset's YAML text."""
        return self.resource.read_text(encoding="utf-8")

    @property
    def description(self) -> str:
        """The first comment line of the preset ('' when it starts with no comment)."""
        for line in self.text.splitlines():
            stripped = line.strip()
            if not stripped:
                continue
            return stripped.lstrip("#").strip() if stripped.startswith("#") else ""
        return ""


def _group_dir(group: str) -> Traversable:
    if group not in PRESET_GROUPS:
        raise ValueError(f"unknown preset group {group!r}; expected one of {', '.join(PRESET_GROUPS)}")
    return files("medssl") / "configs" / group


def list_presets(group: str) -> list[Preset]:
    """The presets of ``group`` sorted by name.

    Raises:
        ValueError: ``group`` is not one of :data:`PRESET_GROUPS`.
    """
    folder = _group_dir(group)
    found = [Preset(group, entry.name[: -len(_SUFFIX)], entry) for entry in folder.iterdir()
             if entry.is_file() and entry.name.endswith(_SUFFIX)]
    return sorted(found, key=lambda preset: preset.name)


def find_preset(name: str, group: str) -> Preset | None:
    """The preset ``name`` (with or without ``.yaml``) of ``group``, or None when there is none."""
    stem = name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name
    resource = _group_dir(group) / f"{stem}{_SUFFIX}"
    return Preset(group, stem, resource) if resource.is_file() else None


def preset_path(name: str, group: str) -> Path | None:
    """A file system path holding the preset ``name`` of ``group`` (None when there is none).

    Installed packages are ordinary folders, whose files are returned as they are; a package imported
    from a zip archive has its preset copied once into a per-version folder of the temporary directory.
    """
    preset = find_preset(name, group)
    if preset is None:
        return None
    if isinstance(preset.resource, Path):
        return preset.resource
    copy = Path(tempfile.gettempdir()) / f"medssl-{__version__}-presets" / group / f"{preset.name}{_SUFFIX}"
    if not copy.is_file() or copy.read_text(encoding="utf-8") != preset.text:
        from medssl.runtime.atomic import write_text_atomic

        write_text_atomic(copy, preset.text)
    return copy
