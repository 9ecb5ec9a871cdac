"""Exporting the encoder of a pretraining run as a self-describing weights file.

The file (see :mod:`medssl.models.encoder_io`) holds ``{"state_dict": weights, "medssl_encoder": record}``:
the record names the architecture, input channels, the constructor the weights load into strictly, the
source run, checkpoint and iteration, and the git commit that trained the run. timm loads it as it is
(``timm.create_model(backbone, num_classes=0, in_chans=..., checkpoint_path=file)``); the JSON sidecar
``<file>.json`` repeats the record for tools that read JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medssl.config import load_run_config
from medssl.engine.pretrain import PretrainConfig
from medssl.errors import MedsslInputError
from medssl.models.encoder_io import encoder_metadata, encoder_payload
from medssl.runtime.atomic import write_json_atomic
from medssl.runtime.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from medssl.runtime.rundir import RunDir

__all__ = ["EncoderExport", "export_encoder", "export_encoder_checked", "read_pretrain_config"]


def read_pretrain_config(run_dir: str | Path) -> PretrainConfig:
    """The resolved :class:`PretrainConfig` saved in a pretraining run directory."""
    return load_run_config(run_dir, PretrainConfig, ("model", "masking"), "pretraining run")


@dataclass
class EncoderExport:
    """An exported encoder: the weights file, its JSON sidecar and the strict-load check that passed."""

    path: Path
    sidecar: Path
    format: str
    target: str
    tensors: int
    parameters: int
    check: str


def export_encoder_checked(run_dir: str | Path, format: Literal["timm", "vnet"], out: str | Path,
                           checkpoint: str = "final") -> EncoderExport:
    """Write the run's encoder weights as a self-describing file (see the module docstring) and check that
    they load strictly.

    ``timm`` (2D runs): key names of ``timm.create_model(backbone, num_classes=0, in_chans=...)``;
    ``vnet`` (3D runs): key names of :class:`medssl.models.vnet.VNetEncoder` (what
    ``medssl semi train --init-encoder`` loads). The ``medssl_encoder`` record inside the file and the JSON
    sidecar ``<out>.json`` name the run, checkpoint, commit, backbone, input channels and normalisation.

    Raises:
        MedsslInputError: wrong format for the run, missing checkpoint, or weights that do not load.
    """
    from medssl.models.spark import build_spark, dense_encoder

    if format not in ("timm", "vnet"):
        raise MedsslInputError("--format", f"expected timm or vnet, got {format!r}")
    cfg = read_pretrain_config(run_dir)
    m = cfg.model
    if format == "timm" and m.dims != 2:
        raise MedsslInputError(run_dir, "is a 3D V-Net run: export it with --format vnet")
    if format == "vnet" and m.dims != 3:
        raise MedsslInputError(run_dir, f"is a 2D {m.backbone} run: export it with --format timm")
    manager = CheckpointManager(RunDir(Path(run_dir)).checkpoints)
    which: int | str = int(checkpoint) if str(checkpoint).isdigit() else checkpoint
    path = manager.path_for(which)
    if not path.is_file():
        raise MedsslInputError(path, f"checkpoint {checkpoint!r} not found in the run")
    state = load_checkpoint(path)
    spark = build_spark(m.backbone, dims=m.dims, in_chans=m.in_chans, input_mode=m.input_mode,
                        decoder_width=m.decoder_width, drop_path=m.drop_path, vnet_width=m.vnet_width)
    try:
        spark.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise MedsslInputError(path, f"checkpoint does not fit the run's SparK model: "
                               f"{str(err).splitlines()[0]}") from None
    weights = spark.encoder_state_dict()
    dense = dense_encoder(m.backbone, dims=m.dims, in_chans=m.in_chans, input_mode=m.input_mode,
                          drop_path=m.drop_path, vnet_width=m.vnet_width)
    dense.load_state_dict(weights, strict=True)  # our own export must fit: a failure here is a bug
    encoder_chans = 3 if m.input_mode == "replicate3" else m.in_chans
    if format == "timm":
        target = f"timm.create_model({m.backbone!r}, num_classes=0, in_chans={encoder_chans})"
    else:
        target = f"medssl.models.vnet.VNetEncoder(in_channels={encoder_chans}, base_width={m.vnet_width})"
    n_params = sum(p.numel() for p in dense.parameters())
    check = f"loaded strictly into {target}: {len(weights)} tensors, {n_params:,} parameters"
    manifest = _manifest(Path(run_dir))
    commit = {"commit": manifest.get("git_commit"), "dirty": manifest.get("git_dirty")} \
        if manifest.get("git_commit") else None
    meta = encoder_metadata(
        architecture=m.backbone if m.dims == 2 else "vnet", in_chans=encoder_chans, dims=m.dims, target=target,
        source_run=str(Path(run_dir).resolve()), source_checkpoint=str(path), iteration=state.get("iteration"),
        commit=commit, format=format, backbone=m.backbone, input_mode=m.input_mode, image_chans=m.in_chans,
        vnet_width=m.vnet_width if m.dims == 3 else None, masking=cfg.masking.model_dump(mode="json"),
        normalization=_run_normalization(manifest), tensors=len(weights), parameters=n_params, check=check)
    out = Path(out)
    save_checkpoint(out, encoder_payload(weights, meta))
    sidecar = out.with_name(out.name + ".json")
    write_json_atomic(sidecar, {**meta, "run": meta["source_run"], "checkpoint": meta["source_checkpoint"],
                                "in_chans": m.in_chans})  # the sidecar's historical keys (image channels)
    return EncoderExport(path=out, sidecar=sidecar, format=format, target=target, tensors=len(weights),
                         parameters=n_params, check=check)


def export_encoder(run_dir: str | Path, format: Literal["timm", "vnet"], out: str | Path,
                   checkpoint: str = "final") -> Path:
    """Export the run's encoder (see :func:`export_encoder_checked`); returns the weights file."""
    return export_encoder_checked(run_dir, format, out, checkpoint).path


def _manifest(run_dir: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _run_normalization(manifest: dict[str, Any]) -> dict[str, Any] | None:
    try:
        data = manifest["extra"]["pretrain"]["data"]
        return {"mean": data["mean"], "std": data["std"]}
    except (KeyError, TypeError):
        return None
