"""medssl.engine.loop in one process: schedule, logging, checkpoints, best model, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medssl.config import RuntimeConfig
from medssl.engine.loop import LoopSpec, PeriodicTask, TrainingDivergedError, train_iterations
from medssl.errors import MedsslInputError
from medssl.runtime.checkpoint import load_checkpoint
from medssl.runtime.fabric import describe_device, setup_fabric
from medssl.runtime.metrics_log import read_metrics
from medssl.runtime.rundir import RunDir


@pytest.fixture(scope="module")
def fabric():
    return setup_fabric(RuntimeConfig(name="t", accelerator="cpu", devices=1))


class Counter:
    """Extra state: counts steps."""

    def __init__(self) -> None:
        self.steps = 0

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])


def make(fabric, lr: float = 0.1):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return fabric.setup(model, optimizer)


def batch_fn(iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(iteration)
    x = torch.randn(8, 3, generator=g)
    return x, x.sum(1, keepdim=True)


def test_schedule_logging_checkpoints_and_best(fabric, tmp_path: Path) -> None:
    run = RunDir.prepare(tmp_path / "run", "new")
    model, optimizer = make(fabric)
    counter = Counter()
    val_values = iter([3.0, 1.0, 2.0])

    def step_fn(batch, iteration):
        x, y = batch
        loss = nn.functional.mse_loss(model(x), y)
        return loss, {"twice": loss.detach() * 2}

    spec = LoopSpec(max_iterations=13, checkpoint_every=4, log_every=3, keep_checkpoints=2,
                    lr_schedule=lambda i: 1.0 / (1 + i), best_metric="score", best_mode="min")
    result = train_iterations(
        fabric, run, model, optimizer, batch_fn, step_fn, spec, extra_state={"counter": counter},
        after_step=lambda i: setattr(counter, "steps", counter.steps + 1),
        periodic=[PeriodicTask(4, lambda done: {"score": next(val_values)})], quiet=True)

    assert counter.steps == 13 and result.iterations == 13 and result.start_iteration == 0
    rows = read_metrics(run.metrics_csv)
    train = [r for r in rows if r["phase"] == "train"]
    assert [r["iteration"] for r in train] == [3, 6, 9, 12, 13]  # every 3 and the last one
    for row in train:  # lr of step index i is 0.1 / (1 + i); the row of `done` logs index done - 1
        assert row["lr"] == pytest.approx(0.1 / row["iteration"], rel=1e-12)
        assert row["twice"] == pytest.approx(2 * row["loss"], rel=1e-6)
    assert [(r["iteration"], r["score"]) for r in rows if r["phase"] == "val"] == [(4, 3.0), (8, 1.0), (12, 2.0)]
    assert result.best_value == 1.0 and result.best_iteration == 8

    names = sorted(p.name for p in run.checkpoints.iterdir())
    assert names == ["best.pt", "final.pt", "iter_00000012.pt", "iter_00000013.pt"]  # keep=2, plus the end
    final = load_checkpoint(run.checkpoints / "final.pt")
    assert final["iteration"] == 13 and final["extra"]["counter"] == {"steps": 13}
    assert torch.equal(final["model"]["weight"], model.state_dict()["weight"])
    assert final["best"] == {"metric": "score", "value": 1.0, "iteration": 8}
    assert len(final["rng"]) == 1 and final["world_size"] == 1
    best = load_checkpoint(run.checkpoints / "best.pt")
    assert best["iteration"] == 8 and best["extra"]["counter"] == {"steps": 8}
    # the learning rate decreased the loss on this well-posed regression
    assert train[-1]["loss"] < train[0]["loss"]
    assert describe_device(fabric).startswith("cpu, 1 process")


def test_resume_continues_and_validates(fabric, tmp_path: Path) -> None:
    run = RunDir.prepare(tmp_path / "run", "new")

    def train(max_iterations: int, resume: bool, extra: dict | None = None):
        model, optimizer = make(fabric)

        def step_fn(batch, iteration):
            x, y = batch
            return nn.functional.mse_loss(model(x), y), {}

        spec = LoopSpec(max_iterations=max_iterations, checkpoint_every=5, log_every=5)
        result = train_iterations(fabric, run, model, optimizer, batch_fn, step_fn, spec, resume=resume,
                                  extra_state=extra, quiet=True)
        return result, model

    with pytest.raises(MedsslInputError, match="no checkpoint"):
        train(10, resume=True)
    train(10, resume=False)
    result, _ = train(20, resume=True)  # extend a finished run
    assert result.start_iteration == 10
    assert [r["iteration"] for r in read_metrics(run.metrics_csv)] == [5, 10, 15, 20]
    with pytest.raises(MedsslInputError, match="more than the requested 15"):
        train(15, resume=True)
    with pytest.raises(MedsslInputError, match="lacks the training state"):
        train(25, resume=True, extra={"pool": Counter()})


def test_divergence_and_unwrapped_model(fabric, tmp_path: Path) -> None:
    run = RunDir.prepare(tmp_path / "run", "new")
    model, optimizer = make(fabric)

    def step_fn(batch, iteration):
        x, _ = batch
        out = model(x).mean()
        return out * float("nan") if iteration >= 2 else out, {}

    spec = LoopSpec(max_iterations=10, checkpoint_every=5, log_every=2)
    with pytest.raises(TrainingDivergedError, match="loss is nan at iteration 4"):
        train_iterations(fabric, run, model, optimizer, batch_fn, step_fn, spec, quiet=True)

    raw = nn.Linear(3, 1)
    with pytest.raises(TypeError, match="fabric.setup"):
        train_iterations(fabric, run, raw, torch.optim.SGD(raw.parameters(), lr=0.1), batch_fn, step_fn, spec)
    with pytest.raises(ValueError):
        LoopSpec(max_iterations=10, checkpoint_every=0, log_every=1)


def test_start_run_writes_config_and_manifest(tmp_path: Path) -> None:
    import json

    import yaml

    from medssl.runtime.fabric import resolve_accelerator
    from medssl.runtime.manifest import fingerprint_paths
    from medssl.runtime.session import prepare_mode, start_run

    data = tmp_path / "data.txt"
    data.write_text("case1\n")
    rt = RuntimeConfig(name="s", runs_root=tmp_path / "runs", accelerator="cpu", seed=21)
    session = start_run(rt, rt, "new", command=["medssl", "x"], data_paths=[data], extra={"n": 1})
    assert session.run.root == tmp_path / "runs" / "s" and not session.resume
    assert yaml.safe_load(session.run.config_yaml.read_text())["seed"] == 21
    manifest = json.loads(session.run.manifest_json.read_text())
    assert manifest["command"] == ["medssl", "x"] and manifest["seed"] == 21 and manifest["extra"] == {"n": 1}
    assert manifest["data_fingerprint"] == fingerprint_paths([data])
    assert manifest["device"] == describe_device(session.fabric)
    expected = torch.randn(3)
    torch.manual_seed(21)
    assert torch.equal(expected, torch.randn(3))  # seeded with runtime.seed

    with pytest.raises(MedsslInputError, match="--resume"):
        start_run(rt, rt, "new")
    with pytest.raises(MedsslInputError, match="no checkpoint"):
        start_run(rt, rt, prepare_mode(resume=True, overwrite=False))
    with pytest.raises(MedsslInputError, match="not both"):
        prepare_mode(resume=True, overwrite=True)
    assert prepare_mode(False, True) == "overwrite" and prepare_mode(False, False) == "new"
    assert resolve_accelerator("gpu") == "cuda" and resolve_accelerator("cpu") == "cpu"
    assert resolve_accelerator("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_start_run_sets_the_thread_count(tmp_path: Path) -> None:
    from medssl.runtime.session import start_run

    before = torch.get_num_threads()
    try:
        start_run(RuntimeConfig(name="t", runs_root=tmp_path, accelerator="cpu", threads=1), RuntimeConfig(name="t"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_prefetch_builds_each_batch_once_ahead_and_trains_the_same(fabric, tmp_path: Path) -> None:
    weights, calls = {}, {}
    for prefetch in (False, True):
        run = RunDir.prepare(tmp_path / f"run_{prefetch}", "new")
        model, optimizer = make(fabric)
        seen: list[int] = []

        def counted(iteration: int, seen: list[int] = seen) -> tuple[torch.Tensor, torch.Tensor]:
            seen.append(iteration)
            return batch_fn(iteration)

        def step_fn(batch, iteration, model=model):
            x, y = batch
            loss = nn.functional.mse_loss(model(x), y)
            return loss, {}

        spec = LoopSpec(max_iterations=6, checkpoint_every=6, log_every=2, enable_tensorboard=False,
                        prefetch=prefetch)
        train_iterations(fabric, run, model, optimizer, counted, step_fn, spec, quiet=True)
        weights[prefetch] = [p.detach().clone() for p in model.parameters()]
        calls[prefetch] = sorted(seen)
    assert calls[True] == calls[False] == list(range(6))  # nothing built twice, nothing past the end
    assert all(torch.equal(a, b) for a, b in zip(weights[False], weights[True], strict=True))
