"""medssl.runtime.rundir: creating, reusing, overwriting and opening run directories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from medssl.errors import MedsslInputError
from medssl.runtime.rundir import RunDir, discard_failed_start

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


def _fail_inside_guard(action: Callable[[], None], error: BaseException) -> None:
    with pytest.raises(type(error)), discard_failed_start():
        action()
        raise error


def test_failed_start_removes_the_new_run_and_the_folders_made_for_it(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "group" / "r"
    _fail_inside_guard(lambda: RunDir.prepare(root, "new"), MedsslInputError("x.nii.gz", "contains NaN"))
    assert list(tmp_path.iterdir()) == []  # runs/ and runs/group/ were made for the run: gone too
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "other").mkdir()
    _fail_inside_guard(lambda: RunDir.prepare(root, "overwrite"), KeyboardInterrupt())  # Ctrl-C during set-up
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["other"]
    RunDir.prepare(root, "new")  # the identical start works afterwards without --overwrite


def test_failed_start_keeps_runs_with_a_checkpoint_resumed_runs_and_foreign_folders(tmp_path: Path) -> None:
    def started() -> None:
        run = RunDir.prepare(tmp_path / "started", "new")
        (run.checkpoints / "iter_00000001.pt").write_bytes(b"x")

    _fail_inside_guard(started, RuntimeError("diverged"))
    assert (tmp_path / "started" / "checkpoints" / "iter_00000001.pt").is_file()
    _fail_inside_guard(lambda: RunDir.prepare(tmp_path / "started", "resume"), MedsslInputError(None, "bad"))
    assert (tmp_path / "started" / "checkpoints" / "iter_00000001.pt").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(MedsslInputError, match="already exists"), discard_failed_start():
        RunDir.prepare(tmp_path / "mine", "new")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_runs_prepared_outside_a_guard_or_in_a_successful_block_stay(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        RunDir.prepare(tmp_path / "a", "new")
        raise ValueError("no guard")
    assert (tmp_path / "a" / "checkpoints").is_dir()
    with discard_failed_start():
        RunDir.prepare(tmp_path / "b", "new")
    assert (tmp_path / "b" / "checkpoints").is_dir()
