"""medssl.runtime.checkpoint and seeding: atomic writes, corrupt files, pruning, RNG round trip."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from medssl.errors import MedsslInputError
from medssl.runtime.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from medssl.runtime.seeding import capture_rng_state, restore_rng_state, seed_everything


class Unpicklable:
    def __reduce__(self):  # noqa: D105 - makes torch.save fail half-way
        raise RuntimeError("disk full")


def test_save_load_round_trip(tmp_path: Path) -> None:
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "iteration": 5, "names": ["a", "b"]}
    path = save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["iteration"] == 5 and loaded["names"] == ["a", "b"]


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {"v": torch.tensor([1.0])})
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"v": torch.tensor([2.0]), "bad": Unpicklable()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left
    assert torch.equal(load_checkpoint(path)["v"], torch.tensor([1.0]))


def test_corrupt_files_give_clear_errors(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path / "good.pt", {"w": torch.randn(100)})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    for bad in (truncated, garbage):
        with pytest.raises(MedsslInputError) as info:
            load_checkpoint(bad)
        assert info.value.source == str(bad)
        assert "truncated or corrupt" in info.value.problem and "\n" not in str(info.value)

    torch.save({"obj": Path("x")}, tmp_path / "pickle.pt")  # arbitrary objects are refused
    with pytest.raises(MedsslInputError, match="Python objects .*PosixPath"):
        load_checkpoint(tmp_path / "pickle.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(MedsslInputError, match="expected a dictionary"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(MedsslInputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_manager_prunes_and_finds(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "ckpt", keep=2)
    assert manager.latest() is None
    with pytest.raises(MedsslInputError, match="no checkpoint"):
        manager.path_for("latest")
    for it in (10, 20, 30):
        manager.save(it, {"iteration": it})
    manager.save_named("best", {"iteration": 20})
    manager.save_named("final", {"iteration": 30})
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["best.pt", "final.pt", "iter_00000020.pt", "iter_00000030.pt"]
    assert manager.latest() == manager.path_for(30) == manager.path_for("30")
    assert manager.path_for("latest") == tmp_path / "ckpt" / "iter_00000030.pt"
    assert manager.path_for("final").name == "final.pt" and manager.path_for("best").name == "best.pt"
    assert [it for it, _ in manager.iterations()] == [20, 30]
    assert load_checkpoint(manager.path_for("best"))["iteration"] == 20
    with pytest.raises(MedsslInputError, match="expected 'final', 'best', 'latest'"):
        manager.path_for("newest")

    # only final.pt left: it is the latest state
    for _, p in manager.iterations():
        p.unlink()
    assert manager.latest() == manager.path_for("final")

    # temporaries of a killed writer are recognised and removed, real checkpoints kept
    stale = tmp_path / "ckpt" / ".iter_00000040.pt.abc123.tmp.pt"
    stale.write_bytes(b"half")
    assert manager.remove_stale_temporaries() == [stale]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["best.pt", "final.pt"]


def _draw() -> tuple[float, float, list[float], torch.Tensor]:
    return random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.randn(4)


def test_rng_state_round_trip_through_weights_only_load(tmp_path: Path) -> None:
    seed_everything(123, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.standard_normal()  # and in numpy's
    state = capture_rng_state()
    expected = _draw()
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    _draw()  # move every generator on
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = _draw()
    assert got[:3] == expected[:3]
    assert torch.equal(got[3], expected[3])


def test_seed_everything_is_reproducible() -> None:
    seed_everything(5, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    first = _draw()
    seed_everything(5, deterministic=True)
    second = _draw()
    assert first[:3] == second[:3] and torch.equal(first[3], second[3])
    with pytest.raises(ValueError):
        seed_everything(-1)
