"""The iteration-based training loop shared by every medssl training command.

Semi-supervised training, masked pretraining and fine-tuning all run through
:func:`train_iterations`. A command supplies two functions:

* ``batch_fn(iteration)`` returns the batch of that iteration. Batches must be a pure function of the
  seed, the iteration (and the rank), so resuming needs no data-loader state.
* ``step_fn(batch, iteration)`` computes ``(loss, logs)``: the scalar loss to back-propagate and the
  values to log (floats or 0-dim tensors).

Iterations are numbered from 0: ``batch_fn``, ``step_fn``, ``lr_schedule`` and ``after_step`` receive
the index of the step being taken. Metric rows, periodic tasks and checkpoints are keyed by the number
of *completed* iterations (``index + 1``), so ``iter_00000030.pt`` holds the state after 30 steps.

A checkpoint holds the model, optimizer, scheduler, every ``extra_state`` object, the best value seen
so far, the iteration and the RNG states of every rank; ``resume=True`` restores all of it and
continues, producing the same ``metrics.csv`` and weights as an uninterrupted run (CPU, deterministic).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import torch
from torch import Tensor

from medssl.errors import MedsslInputError
from medssl.runtime.checkpoint import CheckpointManager, load_checkpoint
from medssl.runtime.metrics_log import MetricsLogger
from medssl.runtime.progress import progress_bar
from medssl.runtime.rundir import RunDir
from medssl.runtime.seeding import capture_rng_state, restore_rng_state

if TYPE_CHECKING:
    from lightning.fabric import Fabric

    from medssl.config import RuntimeConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "LoopResult",
    "LoopSpec",
    "PeriodicTask",
    "Stateful",
    "TrainingDivergedError",
    "train_iterations",
]

CHECKPOINT_FORMAT = "medssl-train-v1"


class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()`` (an EMA teacher, a feature pool, ...)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


class TrainingDivergedError(MedsslInputError):
    """The loss became NaN or infinite (usually a learning rate too high for the data)."""


@dataclass
class PeriodicTask:
    """Call ``fn(completed_iterations) -> metrics`` every ``every`` iterations on every rank.

    Rank 0 logs the returned metrics with ``phase``. The model is put back in training mode afterwards.
    """

    every: int
    fn: Callable[[int], Mapping[str, float] | None]
    phase: str = "val"


@dataclass
class LoopSpec:
    """How long to train and how often to log and checkpoint.

    Args:
        max_iterations: total number of optimizer steps.
        checkpoint_every: completed iterations between checkpoints.
        log_every: completed iterations between metric rows.
        keep_checkpoints: periodic checkpoints kept on disk.
        grad_clip: maximum global gradient L2 norm (None: no clipping).
        lr_schedule: ``lr_schedule(iteration)`` is a *multiplier* of each parameter group's initial
            learning rate for that step (e.g. poly decay ``(1 - i / max) ** 0.9``).
        best_metric: name of a periodic-task metric; ``best.pt`` is written whenever it improves.
        best_mode: whether a larger (``"max"``) or smaller (``"min"``) ``best_metric`` is better.
        enable_tensorboard: also write TensorBoard scalars.
        prefetch: build the next iteration's batch in a background thread while the current step runs
            (``batch_fn`` must then be thread-safe and use its own random generators, as the training
            commands' batch functions do); the batches are the same either way.
    """

    max_iterations: int
    checkpoint_every: int
    log_every: int
    keep_checkpoints: int = 3
    grad_clip: float | None = None
    lr_schedule: Callable[[int], float] | None = None
    best_metric: str | None = None
    best_mode: Literal["max", "min"] = "max"
    enable_tensorboard: bool = True
    prefetch: bool = False

    @classmethod
    def from_runtime(cls, runtime: RuntimeConfig, max_iterations: int, **kwargs: Any) -> LoopSpec:
        """A spec taking ``checkpoint_every``, ``log_every`` and ``keep_checkpoints`` from the runtime config."""
        return cls(max_iterations=max_iterations, checkpoint_every=runtime.checkpoint_every,
                   log_every=runtime.log_every, keep_checkpoints=runtime.keep_checkpoints, **kwargs)

    def __post_init__(self) -> None:
        if self.max_iterations < 0:
            raise ValueError(f"max_iterations must be >= 0, got {self.max_iterations}")
        for name in ("checkpoint_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {self.best_mode!r}")


@dataclass
class LoopResult:
    """What :func:`train_iterations` did."""

    start_iteration: int
    iterations: int
    final_checkpoint: Path
    last_logs: dict[str, float] = field(default_factory=dict)
    best_value: float | None = None
    best_iteration: int | None = None
    seconds: float = 0.0


class _Prefetcher:
    """``get(i)`` returns ``batch_fn(i)``; with ``enabled``, ``batch_fn(i + 1)`` is already being built in a
    background thread when ``get(i)`` returns (one batch ahead, off the training step's critical path)."""

    def __init__(self, batch_fn: Callable[[int], Any], enabled: bool, stop: int) -> None:
        self.batch_fn, self.stop = batch_fn, stop
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medssl-batch") if enabled else None
        self.pending: tuple[int, Future[Any]] | None = None

    def get(self, iteration: int) -> Any:
        if self.pool is None:
            return self.batch_fn(iteration)
        if self.pending is not None and self.pending[0] == iteration:
            batch = self.pending[1].result()
        else:
            batch = self.batch_fn(iteration)
        nxt = iteration + 1
        self.pending = (nxt, self.pool.submit(self.batch_fn, nxt)) if nxt < self.stop else None
        return batch

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _as_float(value: Any) -> float:
    return float(value.detach().float().item()) if isinstance(value, Tensor) else float(value)


def _gather_rng(fabric: Fabric) -> list[dict[str, Any]]:
    state = capture_rng_state()
    if fabric.world_size == 1:
        return [state]
    import torch.distributed as dist

    gathered: list[Any] = [None] * fabric.world_size
    dist.all_gather_object(gathered, state)
    return gathered


def _mean_over_ranks(fabric: Fabric, values: dict[str, float]) -> dict[str, float]:
    if fabric.world_size == 1 or not values:
        return values
    stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=fabric.device)
    reduced = cast(torch.Tensor, fabric.all_reduce(stacked, reduce_op="mean"))
    return {k: float(v) for k, v in zip(values, reduced.tolist(), strict=True)}


def _improved(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def train_iterations(
    fabric: Fabric,
    run: RunDir,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_fn: Callable[[int], Any],
    step_fn: Callable[[Any, int], tuple[Tensor, Mapping[str, Any]]],
    spec: LoopSpec,
    *,
    extra_state: Mapping[str, Stateful] | None = None,
    after_step: Callable[[int], None] | None = None,
    periodic: Sequence[PeriodicTask | tuple[int, Callable[[int], Mapping[str, float] | None]]] = (),
    scheduler: Any | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> LoopResult:
    """Train for ``spec.max_iterations`` optimizer steps with logging, checkpoints and exact resume.

    Args:
        fabric: a launched Fabric (see :func:`medssl.runtime.fabric.setup_fabric`).
        run: the run directory (prepared by rank 0 before this is called).
        model, optimizer: as returned by ``fabric.setup(model, optimizer)``.
        batch_fn: ``batch_fn(iteration) -> batch`` for the 0-based step index.
        step_fn: ``step_fn(batch, iteration) -> (loss, logs)``; ``loss`` is a scalar tensor.
        spec: lengths, intervals, clipping and learning-rate schedule.
        extra_state: named objects whose ``state_dict()`` is checkpointed and restored.
        after_step: called with the step index after each optimizer step (e.g. an EMA update).
        periodic: :class:`PeriodicTask` objects or ``(every, fn)`` pairs (logged as phase ``"val"``).
        scheduler: optional torch LR scheduler, stepped after every optimizer step and checkpointed.
        resume: continue from the run's latest checkpoint.
        quiet: plain progress lines instead of a live bar.

    Returns:
        A :class:`LoopResult`; ``final.pt`` in the run's checkpoint folder holds the final state.

    Raises:
        MedsslInputError: resuming without a usable checkpoint.
        TrainingDivergedError: the loss became NaN or infinite.
    """
    from lightning.fabric.wrappers import is_wrapped

    if not is_wrapped(model) or not is_wrapped(optimizer):
        raise TypeError("train_iterations needs the model and optimizer returned by fabric.setup(model, optimizer)")
    extra = dict(extra_state or {})
    tasks = [t if isinstance(t, PeriodicTask) else PeriodicTask(int(t[0]), t[1]) for t in periodic]
    for task in tasks:
        if task.every < 1:
            raise ValueError(f"periodic task interval must be >= 1, got {task.every}")
    is_main = fabric.global_rank == 0
    manager = CheckpointManager(run.checkpoints, keep=spec.keep_checkpoints)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])

    start = 0
    best_value: float | None = None
    best_iteration: int | None = None
    rng_states: list[dict[str, Any]] | None = None
    if resume:
        path = manager.latest()
        if path is None:
            raise MedsslInputError(run.root, "cannot resume: the run has no checkpoint yet")
        ckpt = load_checkpoint(path)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise MedsslInputError(path, "not a medssl training checkpoint (cannot resume from it)")
        missing = [name for name in extra if name not in ckpt.get("extra", {})]
        if missing:
            raise MedsslInputError(path, f"checkpoint lacks the training state {missing}; it was written by another command")
        start = int(ckpt["iteration"])
        if start > spec.max_iterations:
            raise MedsslInputError(
                path, f"the run already has {start} iterations, more than the requested {spec.max_iterations}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        for name, obj in extra.items():
            obj.load_state_dict(ckpt["extra"][name])
        best = ckpt.get("best") or {}
        best_value, best_iteration = best.get("value"), best.get("iteration")
        rng_states = ckpt["rng"]

    logger = MetricsLogger(run, enable_tensorboard=spec.enable_tensorboard) if is_main else None
    if logger is not None and resume:
        manager.remove_stale_temporaries()
        logger.truncate_after(start)

    def state(done: int) -> dict[str, Any] | None:
        """The checkpoint content on rank 0 (None elsewhere); every rank must call it (RNG gather)."""
        rng = _gather_rng(fabric)
        if not is_main:
            return None
        return {
            "format": CHECKPOINT_FORMAT,
            "iteration": done,
            "world_size": fabric.world_size,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "extra": {name: obj.state_dict() for name, obj in extra.items()},
            "best": {"metric": spec.best_metric, "value": best_value, "iteration": best_iteration},
            "rng": rng,
        }

    if rng_states is not None:
        # Restored last, so nothing between here and the first step consumes random numbers.
        restore_rng_state(rng_states[fabric.global_rank] if len(rng_states) == fabric.world_size else rng_states[0])

    last_logs: dict[str, float] = {}
    saved_at = start if resume else -1
    t0 = time.monotonic()
    model.train()
    batches = _Prefetcher(batch_fn, spec.prefetch, spec.max_iterations)
    try:
        with progress_bar(spec.max_iterations, f"train {run.root.name}", quiet=quiet, start=start) as bar:
            for iteration in range(start, spec.max_iterations):
                done = iteration + 1
                if spec.lr_schedule is not None:
                    factor = float(spec.lr_schedule(iteration))
                    for group in optimizer.param_groups:
                        group["lr"] = group["initial_lr"] * factor
                batch = batches.get(iteration)
                optimizer.zero_grad(set_to_none=True)
                loss, logs = step_fn(batch, iteration)
                fabric.backward(loss)
                if spec.grad_clip is not None:
                    fabric.clip_gradients(model, optimizer, max_norm=spec.grad_clip, error_if_nonfinite=False)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if after_step is not None:
                    after_step(iteration)

                if done % spec.log_every == 0 or done == spec.max_iterations:
                    values = {"loss": _as_float(loss), "lr": float(optimizer.param_groups[0]["lr"])}
                    values.update({str(k): _as_float(v) for k, v in logs.items()})
                    values = _mean_over_ranks(fabric, values)
                    if not math.isfinite(values["loss"]):
                        raise TrainingDivergedError(
                            run.root, f"training diverged: the loss is {values['loss']} at iteration {done} "
                            "(try a lower learning rate)")
                    last_logs = values
                    if logger is not None:
                        logger.log(done, values, phase="train")
                    bar.update(done, loss=values["loss"])
                else:
                    bar.update(done)

                for task in tasks:
                    if done % task.every == 0:
                        metrics = {str(k): float(v) for k, v in (task.fn(done) or {}).items()}
                        model.train()
                        if fabric.world_size > 1:  # every rank must take the same best-checkpoint decision
                            metrics = fabric.broadcast(metrics, src=0)
                        if logger is not None and metrics:
                            logger.log(done, metrics, phase=task.phase)
                        if spec.best_metric is not None and spec.best_metric in metrics:
                            value = metrics[spec.best_metric]
                            if _improved(value, best_value, spec.best_mode):
                                best_value, best_iteration = value, done
                                snapshot = state(done)
                                if snapshot is not None:
                                    manager.save_named("best", snapshot)

                if done % spec.checkpoint_every == 0:
                    snapshot = state(done)
                    if snapshot is not None:
                        manager.save(done, snapshot)
                    saved_at = done

        final = state(spec.max_iterations)
        if final is not None:
            if saved_at != spec.max_iterations:
                manager.save(spec.max_iterations, final)
            manager.save_named("final", final)
    finally:
        batches.close()
        if logger is not None:
            logger.close()
    fabric.barrier()
    return LoopResult(start_iteration=start, iterations=spec.max_iterations,
                      final_checkpoint=manager.path_for("final"), last_logs=last_logs,
                      best_value=best_value, best_iteration=best_iteration, seconds=time.monotonic() - t0)
