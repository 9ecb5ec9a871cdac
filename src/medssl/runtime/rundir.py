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

A run that fails before its first checkpoint leaves nothing behind: inside :func:`discard_failed_start`
(every ``train_*`` function of :mod:`medssl.engine` runs inside it), a directory that
:meth:`RunDir.prepare` created for a new run is removed again when the block raises before the run holds a
checkpoint, so the identical command works again once the cause is fixed. A resumed run is never removed.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medssl.errors import MedsslInputError

__all__ = ["PrepareMode", "RunDir", "discard_failed_start"]

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

    def discard(self, keep: Path) -> None:
        """Delete the run directory and the empty folders above it, up to (without) its ancestor ``keep``."""
        if self.root.is_dir():
            shutil.rmtree(self.root)
        folder = self.root.parent
        while folder != keep and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent

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
        kept = _existing_ancestor(run.root.parent)
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
        started = _NEW_RUNS.get()
        if mode != "resume" and started is not None:
            started.append((run, kept))
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


#: The run directories prepared for new runs inside the innermost :func:`discard_failed_start` block,
#: each with the deepest folder that existed before (kept when the run is discarded).
_NEW_RUNS: ContextVar[list[tuple[RunDir, Path]] | None] = ContextVar("medssl_new_runs", default=None)


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself when it exists, else its deepest existing ancestor (kept when a run is discarded)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


@contextlib.contextmanager
def discard_failed_start() -> Iterator[None]:
    """Remove the new run directories prepared in this block when it raises before their first checkpoint.

    Covers any failure (bad data, bad configuration, missing weights, Ctrl-C) between
    :meth:`RunDir.prepare` and the first checkpoint; a run holding a checkpoint is kept (``--resume``
    continues it), and runs prepared with ``mode="resume"`` are never touched. Usable as a decorator.
    """
    token = _NEW_RUNS.set([])
    try:
        yield
    except BaseException:
        for run, kept in reversed(_NEW_RUNS.get() or []):
            if not run.has_checkpoint():
                run.discard(kept)
        raise
    finally:
        _NEW_RUNS.reset(token)
