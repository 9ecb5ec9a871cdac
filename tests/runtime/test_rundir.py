"""medssl.runtime.rundir: creating, reusing, overwriting and opening run directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from medssl.errors import MedsslInputError
from medssl.runtime.rundir import RunDir

SUBDIRS = {"tensorboard", "checkpoints", "figures", "predictions"}


def test_new_creates_layout(tmp_path: Path) -> None:
    run = RunDir.prepare(tmp_path / "runs" / "a", "new")
    assert {p.name for p in run.root.iterdir()} == SUBDIRS
    assert run.config_yaml == tmp_path / "runs" / "a" / "config.yaml"
    assert run.manifest_json.name == "manifest.json" and run.metrics_csv.name == "metrics.csv"
    assert run.checkpoints == run.root / "checkpoints" and run.predictions == run.root / "predictions"
    # an existing but empty folder is fine for a new run
    (tmp_path / "empty").mkdir()
    RunDir.prepare(tmp_path / "empty", "new")


def test_new_refuses_existing_run_and_mentions_flags(tmp_path: Path) -> None:
    run = RunDir.prepare(tmp_path / "a", "new")
    run.metrics_csv.write_text("iteration,phase\n")
    with pytest.raises(MedsslInputError) as info:
        RunDir.prepare(tmp_path / "a", "new")
    assert "--resume" in info.value.problem and "--overwrite" in info.value.problem
    assert info.value.source == str(tmp_path / "a")
    assert run.metrics_csv.read_text() == "iteration,phase\n"  # untouched

    (tmp_path / "file").write_text("x")
    with pytest.raises(MedsslInputError, match="not a directory"):
        RunDir.prepare(tmp_path / "file", "new")


def test_overwrite_recreates(tmp_path: Path) -> None:
    run = RunDir.prepare(tmp_path / "a", "new")
    run.metrics_csv.write_text("old")
    (run.checkpoints / "iter_00000010.pt").write_bytes(b"x")
    again = RunDir.prepare(tmp_path / "a", "overwrite")
    assert {p.name for p in again.root.iterdir()} == SUBDIRS
    assert not any(again.checkpoints.iterdir())
    # overwrite of a missing folder simply creates it
    assert RunDir.prepare(tmp_path / "b", "overwrite").root.is_dir()


def test_overwrite_never_deletes_foreign_folders(tmp_path: Path) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.png").write_bytes(b"png")
    with pytest.raises(MedsslInputError, match="not a medssl run"):
        RunDir.prepare(foreign, "overwrite")
    assert (foreign / "holiday.png").read_bytes() == b"png"


def test_resume_requires_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(MedsslInputError, match="no medssl run"):
        RunDir.prepare(tmp_path / "missing", "resume")
    run = RunDir.prepare(tmp_path / "a", "new")
    with pytest.raises(MedsslInputError, match="no checkpoint"):
        RunDir.prepare(tmp_path / "a", "resume")
    (run.checkpoints / "iter_00000020.pt").write_bytes(b"x")
    (run.figures / "curve.png").write_bytes(b"png")
    resumed = RunDir.prepare(tmp_path / "a", "resume")
    assert (resumed.figures / "curve.png").read_bytes() == b"png"  # nothing deleted
    assert resumed.has_checkpoint()


def test_open(tmp_path: Path) -> None:
    with pytest.raises(MedsslInputError, match="run directory not found"):
        RunDir.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(MedsslInputError, match="not a medssl run directory"):
        RunDir.open(tmp_path / "plain")
    made = RunDir.prepare(tmp_path / "a", "new")
    assert RunDir.open(tmp_path / "a") == made
