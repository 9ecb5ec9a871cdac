"""The run directory every medssl command writes.

Layout::

    runs/<name>/
        config.yaml       the resolved configuration
        manifest.json     command, versions, git commit, seed, device, data fingerprint
        metrics.csv       one row per logged iteration and phase
        tensorboard/      TensorBoard event files
        checkpoints/      iter_<n>.pt, final.pt, best.pt
        figures/          PNG figures
        predictions/      predicted masks and tables
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medssl.errors import MedsslInputError

__all__ = ["PrepareMode", "RunDir"]

PrepareMode = Literal["new", "resume", "overwrite"]
_SUBDIRS = ("tensorboard", "checkpoints", "figures", "predictions")
_MARKERS = ("config.yaml", "manifest.json", "metrics.csv", "checkpoints")


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory rooted at ``root``."""

    root: Path

    @property
    def config_yaml(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest_json(self) -> Path:
        return self.root / "manifest.json"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    def is_run(self) -> bool:
        """True when ``root`` is a directory holding at least one file or folder a run writes."""
        return self.root.is_dir() and any((self.root / marker).exists() for marker in _MARKERS)

    def has_checkpoint(self) -> bool:
        """True when the run holds a periodic checkpoint or ``final.pt``."""
        from medssl.runtime.checkpoint import CheckpointManager

        return CheckpointManager(self.checkpoints).latest() is not None

    def make_dirs(self) -> None:
        """Create the root and its sub-folders (existing ones are kept)."""
        for sub in _SUBDIRS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @classmethod
    def prepare(cls, root: str | Path, mode: PrepareMode = "new") -> RunDir:
        """Create or reuse the run directory ``root`` for a training command.

        Args:
            root: the run directory.
            mode: ``"new"`` refuses a non-empty existing directory; ``"resume"`` requires an existing
                run holding a checkpoint; ``"overwrite"`` deletes an existing run and starts afresh
                (an existing non-empty folder that is not a medssl run is never deleted).

        Raises:
            MedsslInputError: the directory cannot be used in the requested mode.
        """
        run = cls(Path(root))
        exists = run.root.exists()
        if exists and not run.root.is_dir():
            raise MedsslInputError(run.root, "exists and is not a directory; choose another run name")
        non_empty = exists and any(run.root.iterdir())
        if mode == "new":
            if non_empty:
                raise MedsslInputError(
                    run.root,
                    "run directory already exists and is not empty; pass --resume to continue it "
                    "or --overwrite to replace it")
        elif mode == "resume":
            if not run.is_run():
                raise MedsslInputError(run.root, "cannot resume: no medssl run in this directory")
            if not run.has_checkpoint():
                raise MedsslInputError(
                    run.root, "cannot resume: the run has no checkpoint yet; start it again with --overwrite")
        elif mode == "overwrite":
            if non_empty:
                if not run.is_run():
                    raise MedsslInputError(
                        run.root,
                        "refusing to overwrite: the folder is not empty and is not a medssl run directory")
                shutil.rmtree(run.root)
        else:
            raise ValueError(f"mode must be 'new', 'resume' or 'overwrite', got {mode!r}")
        run.make_dirs()
        return run

    @classmethod
    def open(cls, root: str | Path) -> RunDir:
        """Open an existing run directory for reading.

        Raises:
            MedsslInputError: ``root`` does not exist or is not a medssl run directory.
        """
        run = cls(Path(root))
        if not run.root.exists():
            raise MedsslInputError(run.root, "run directory not found")
        if not run.is_run():
            raise MedsslInputError(
                run.root, "not a medssl run directory (no config.yaml, manifest.json, metrics.csv or checkpoints/)")
        return run
