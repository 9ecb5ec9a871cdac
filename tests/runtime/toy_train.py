"""A tiny but complete medssl training run, executed as a subprocess by the resume and DDP tests.

A small MLP with dropout is trained on random batches that are a pure function of (seed, iteration,
rank). The step draws from the global torch RNG (dropout and a logged noise value), an EMA of the
weights is kept as extra state, a poly learning-rate schedule and gradient clipping are used, and a
periodic validation selects ``best.pt``, so an exact resume must restore every piece of state.

``--pause-at N`` stops in the ``after_step`` hook of the N-th step (before its logging), creates
``--pause-file`` and sleeps, so the test can kill the process at a known point.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from medssl.config import RuntimeConfig
from medssl.engine.loop import LoopSpec, PeriodicTask, train_iterations
from medssl.errors import EXIT_USER_ERROR, MedsslInputError
from medssl.runtime.checkpoint import save_checkpoint
from medssl.runtime.session import prepare_mode, start_run


class WeightEma:
    """Exponential moving average of a module's parameters (extra checkpointed state)."""

    def __init__(self, module: nn.Module, decay: float = 0.9) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def update(self, module: nn.Module) -> None:
        with torch.no_grad():
            for key, value in module.state_dict().items():
                self.shadow[key].mul_(self.decay).add_(value.detach(), alpha=1 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--runs-root", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--log-every", type=int, default=2)
    p.add_argument("--val-every", type=int, default=15)
    p.add_argument("--devices", default="1")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--pause-at", type=int, default=0)
    p.add_argument("--pause-file", type=Path)
    p.add_argument("--dump-weights", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    rt = RuntimeConfig(name=args.name, runs_root=args.runs_root, seed=7, accelerator="cpu",
                       devices=args.devices, strategy=args.strategy, checkpoint_every=args.checkpoint_every,
                       log_every=args.log_every, keep_checkpoints=2, quiet=True)
    session = start_run(rt, rt, prepare_mode(args.resume, args.overwrite), extra={"toy": True})
    fabric = session.fabric

    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    ema = WeightEma(model)
    rank = fabric.global_rank

    def batch_fn(iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(rt.seed * 100_003 + iteration * 17 + rank)
        x = torch.randn(16, 8, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
        return x.to(fabric.device), y.to(fabric.device)

    def step_fn(batch: tuple[torch.Tensor, torch.Tensor], iteration: int):
        x, y = batch
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"acc": acc, "noise": torch.rand(())}

    val_g = torch.Generator().manual_seed(999)
    val_x = torch.randn(64, 8, generator=val_g)
    val_y = (val_x[:, 0] > 0).long() + (val_x[:, 1] > 0.5).long()

    def validate(done: int) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            loss = nn.functional.cross_entropy(model(val_x.to(fabric.device)), val_y.to(fabric.device))
        return {"val_loss": float(loss)}

    def after_step(iteration: int) -> None:
        ema.update(model)
        if args.pause_at and iteration + 1 == args.pause_at:
            args.pause_file.write_text(str(iteration + 1))
            time.sleep(600)

    spec = LoopSpec.from_runtime(rt, args.iterations, grad_clip=1.0,
                                 lr_schedule=lambda i: (1 - i / args.iterations) ** 0.9,
                                 best_metric="val_loss", best_mode="min")
    train_iterations(fabric, session.run, model, optimizer, batch_fn, step_fn, spec, extra_state={"ema": ema},
                     after_step=after_step, periodic=[PeriodicTask(args.val_every, validate)],
                     resume=session.resume, quiet=rt.quiet)
    if args.dump_weights:
        save_checkpoint(session.run.predictions / f"rank{rank}.pt", {"model": model.state_dict()})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except MedsslInputError as err:
        print(f"medssl: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
