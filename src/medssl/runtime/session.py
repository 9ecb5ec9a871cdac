"""Starting a training run: devices, run directory, config, manifest and seeds in the right order.

Every training command calls :func:`start_run` before building its model. The order matters for
multi-process runs: Fabric launches the extra processes first, then rank 0 alone prepares the run
directory (which may delete an old run) and writes ``config.yaml`` and ``manifest.json``, and a
problem found there is raised on every rank instead of leaving the others waiting.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from medssl.config import RuntimeConfig, save_config
from medssl.errors import MedsslInputError
from medssl.runtime.atomic import write_json_atomic
from medssl.runtime.fabric import describe_device, setup_fabric
from medssl.runtime.manifest import build_manifest, fingerprint_paths
from medssl.runtime.rundir import PrepareMode, RunDir
from medssl.runtime.seeding import seed_everything

if TYPE_CHECKING:
    from lightning.fabric import Fabric

__all__ = ["FINGERPRINT_BYTES_PER_FILE", "RunSession", "prepare_mode", "start_run"]

#: Data fingerprints of runs hash at most the first and last 4 MiB of each file (plus every size and name).
FINGERPRINT_BYTES_PER_FILE = 8 * 2**20


@dataclass
class RunSession:
    """A started run: the launched Fabric, the run directory and whether it resumes."""

    fabric: Fabric
    run: RunDir
    resume: bool
    runtime: RuntimeConfig


def prepare_mode(resume: bool, overwrite: bool) -> PrepareMode:
    """The run-directory mode for the ``--resume`` / ``--overwrite`` flags (both together is an error)."""
    if resume and overwrite:
        raise MedsslInputError("--resume/--overwrite", "choose one of --resume and --overwrite, not both")
    return "resume" if resume else "overwrite" if overwrite else "new"


def start_run(
    runtime: RuntimeConfig,
    config: BaseModel,
    mode: PrepareMode = "new",
    *,
    command: Sequence[str] | None = None,
    data_paths: Sequence[str | Path] = (),
    extra: dict[str, Any] | None = None,
) -> RunSession:
    """Launch Fabric, prepare ``runtime.run_dir`` on rank 0, write config and manifest, seed all ranks.

    Args:
        runtime: the run's runtime settings.
        config: the command's full resolved config, written to ``config.yaml``.
        mode: ``"new"``, ``"resume"`` or ``"overwrite"`` (see :meth:`RunDir.prepare`).
        command: recorded in the manifest (default ``sys.argv``).
        data_paths: files/folders whose fingerprint goes into the manifest.
        extra: command-specific manifest facts.

    On resume, the manifest keeps its original content and gains an entry in ``"resumes"``.
    """
    fabric = setup_fabric(runtime)
    root = runtime.run_dir
    problem: tuple[str | None, str] | None = None
    if fabric.global_rank == 0:
        try:
            run = RunDir.prepare(root, mode)
            fingerprint = fingerprint_paths(data_paths, FINGERPRINT_BYTES_PER_FILE) if data_paths else None
            manifest = build_manifest(list(sys.argv if command is None else command), runtime.seed,
                                      describe_device(fabric), fingerprint, extra)
            _write_manifest(run, manifest, resumed=mode == "resume")
            save_config(config, run.config_yaml)
        except MedsslInputError as err:
            problem = (err.source, err.problem)
    problem = fabric.broadcast(problem, src=0)
    if problem is not None:
        raise MedsslInputError(*problem)
    fabric.barrier()
    if runtime.threads is not None:
        import torch

        torch.set_num_threads(runtime.threads)
    seed_everything(runtime.seed, runtime.deterministic)
    return RunSession(fabric=fabric, run=RunDir(root), resume=mode == "resume", runtime=runtime)


def _write_manifest(run: RunDir, manifest: dict[str, Any], resumed: bool) -> None:
    if resumed and run.manifest_json.is_file():
        try:
            original = json.loads(run.manifest_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            original = None
        if isinstance(original, dict):
            entry = {k: manifest[k] for k in ("command", "device", "data_fingerprint", "git_commit",
                                             "git_dirty", "host", "time_utc")}
            original.setdefault("resumes", []).append(entry)
            manifest = original
    write_json_atomic(run.manifest_json, manifest)
