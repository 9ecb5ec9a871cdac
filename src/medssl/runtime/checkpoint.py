"""Atomic checkpoints and a manager that names, finds and prunes them.

A checkpoint is a dictionary of tensors and plain containers written with ``torch.save`` through
:func:`medssl.runtime.atomic.atomic_path` (temporary file, fsync, rename), so a crash never leaves a
half-written checkpoint under its final name. Loading always uses ``weights_only=True``.

Layout of a checkpoint folder::

    iter_00000030.pt   periodic checkpoints, named by the number of completed iterations
    final.pt           the state at the end of training
    best.pt            the best state according to the command's selection metric (optional)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import torch

from medssl.errors import MedsslInputError
from medssl.runtime.atomic import atomic_path
from medssl.safe_load import load_checkpoint

__all__ = ["CheckpointManager", "load_checkpoint", "save_checkpoint"]

_ITER_RE = re.compile(r"^iter_(\d+)\.pt$")
NamedCheckpoint = Literal["final", "best"]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically with ``torch.save``; returns ``path``.

    If writing fails, an existing file at ``path`` is left untouched.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


class CheckpointManager:
    """Periodic checkpoints ``iter_<n>.pt`` in ``directory``, keeping the newest ``keep`` of them.

    ``final.pt`` and ``best.pt`` are written with :meth:`save_named` and never pruned.

    Args:
        directory: the checkpoint folder (created on the first save).
        keep: number of periodic checkpoints kept on disk (>= 1).
    """

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = int(keep)

    def save(self, iteration: int, state: dict[str, Any]) -> Path:
        """Write the checkpoint of ``iteration`` completed iterations, then prune older ones."""
        path = save_checkpoint(self.path_for(int(iteration)), state)
        self.prune()
        return path

    def save_named(self, name: NamedCheckpoint, state: dict[str, Any]) -> Path:
        """Write ``final.pt`` or ``best.pt``."""
        if name not in ("final", "best"):
            raise ValueError(f"named checkpoints are 'final' and 'best', got {name!r}")
        return save_checkpoint(self.directory / f"{name}.pt", state)

    def iterations(self) -> list[tuple[int, Path]]:
        """Periodic checkpoints on disk as ``(iteration, path)``, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = _ITER_RE.match(entry.name)
            if match and entry.is_file():
                found.append((int(match.group(1)), entry))
        return sorted(found)

    def latest(self) -> Path | None:
        """The periodic checkpoint with the most completed iterations, else ``final.pt``, else None."""
        found = self.iterations()
        if found:
            return found[-1][1]
        final = self.directory / "final.pt"
        return final if final.is_file() else None

    def path_for(self, which: int | str) -> Path:
        """Path of ``"final"``, ``"best"``, ``"latest"`` (must exist) or an iteration number.

        Raises:
            MedsslInputError: ``"latest"`` with no checkpoint yet, or an unknown name.
        """
        if isinstance(which, bool):
            raise MedsslInputError(self.directory, f"unknown checkpoint {which!r}")
        if isinstance(which, int) or (isinstance(which, str) and which.strip().isdigit()):
            return self.directory / f"iter_{int(which):08d}.pt"
        if which in ("final", "best"):
            return self.directory / f"{which}.pt"
        if which == "latest":
            latest = self.latest()
            if latest is None:
                raise MedsslInputError(self.directory, "no checkpoint has been written yet")
            return latest
        raise MedsslInputError(
            self.directory, f"unknown checkpoint {which!r}: expected 'final', 'best', 'latest' or an iteration number")

    def prune(self) -> list[Path]:
        """Delete all but the newest ``keep`` periodic checkpoints; returns the deleted paths."""
        found = self.iterations()
        doomed = [path for _, path in found[: max(0, len(found) - self.keep)]]
        for path in doomed:
            path.unlink(missing_ok=True)
        return doomed

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporary files left by a process killed while writing a checkpoint.

        Call only when no other process writes into this folder (e.g. before resuming).
        """
        if not self.directory.is_dir():
            return []
        stale = [p for p in self.directory.iterdir() if p.name.startswith(".") and ".tmp" in p.name and p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale
