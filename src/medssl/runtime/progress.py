"""Progress reporting for long loops (training, inference, synthesis).

On an interactive terminal a rich progress bar shows ``completed/total``, the latest values (e.g. the
loss) and the estimated time left. In quiet mode, when the output is not a terminal (logs, CI), a
plain line is printed every ``every`` steps and at the end instead. Processes other than global
rank 0 stay silent so multi-process runs print each line once.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Protocol, TextIO

__all__ = ["ProgressReporter", "current_rank", "format_duration", "progress_bar"]


class ProgressReporter(Protocol):
    """What :func:`progress_bar` yields."""

    def update(self, completed: int, **values: float) -> None:
        """Set the number of completed steps and (optionally) the values shown beside it."""

    def advance(self, n: int = 1, **values: float) -> None:
        """Add ``n`` completed steps."""


def current_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
    except ImportError:  # pragma: no cover - torch always ships torch.distributed stubs
        pass
    for var in ("RANK", "GLOBAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` for a duration in seconds (``?`` when unknown)."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _format_values(values: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in values.items())


class _Silent:
    def __init__(self, start: int) -> None:
        self.completed = start

    def update(self, completed: int, **values: float) -> None:
        self.completed = completed

    def advance(self, n: int = 1, **values: float) -> None:
        self.completed += n


class _Plain:
    """Prints ``description: completed/total (pct%) values | elapsed | eta`` every ``every`` steps."""

    def __init__(self, total: int, description: str, start: int, every: int, stream: TextIO) -> None:
        self.total, self.description, self.every, self.stream = total, description, every, stream
        self.start = self.completed = self.last_printed = start
        self.values: dict[str, float] = {}
        self.t0 = time.monotonic()

    def update(self, completed: int, **values: float) -> None:
        self.completed = completed
        self.values.update(values)
        if completed != self.last_printed and (completed % self.every == 0 or completed >= self.total):
            self._print()

    def advance(self, n: int = 1, **values: float) -> None:
        self.update(self.completed + n, **values)

    def _print(self) -> None:
        self.last_printed = self.completed
        elapsed = time.monotonic() - self.t0
        done = self.completed - self.start
        eta = (self.total - self.completed) * elapsed / done if done > 0 else float("nan")
        pct = 100.0 * self.completed / self.total if self.total else 100.0
        shown = _format_values(self.values)
        text = f"{self.description}: {self.completed}/{self.total} ({pct:.0f}%)"
        if shown:
            text += f" {shown}"
        text += f" | elapsed {format_duration(elapsed)} | eta {format_duration(eta)}"
        print(text, file=self.stream, flush=True)


class _Rich:
    def __init__(self, progress: object, task: int) -> None:
        self.progress, self.task = progress, task
        self.values: dict[str, float] = {}

    def update(self, completed: int, **values: float) -> None:
        self.values.update(values)
        self.progress.update(self.task, completed=completed, values=_format_values(self.values))  # type: ignore[attr-defined]

    def advance(self, n: int = 1, **values: float) -> None:
        self.values.update(values)
        self.progress.update(self.task, advance=n, values=_format_values(self.values))  # type: ignore[attr-defined]


@contextlib.contextmanager
def progress_bar(
    total: int,
    description: str,
    quiet: bool = False,
    start: int = 0,
    *,
    every: int | None = None,
    stream: TextIO | None = None,
    rank: int | None = None,
) -> Iterator[ProgressReporter]:
    """Report progress of a loop of ``total`` steps, ``start`` of which are already done (resume).

    Args:
        total: number of steps of the whole loop.
        description: shown before the counter.
        quiet: print plain lines instead of a live bar.
        start: steps already completed when the loop begins.
        every: plain-line interval in steps (default: about 20 lines over the loop).
        stream: output stream (default ``sys.stdout``); a non-terminal stream gets plain lines.
        rank: global rank of this process (default: detected); ranks other than 0 print nothing.
    """
    stream = sys.stdout if stream is None else stream
    rank = current_rank() if rank is None else rank
    if rank != 0:
        yield _Silent(start)
        return
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    if quiet or not is_tty:
        yield _Plain(total, description, start, max(1, every or total // 20 or 1), stream)
        return

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[values]}"), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(file=stream), transient=False) as progress:
        task = progress.add_task(description, total=total, completed=start, values="")
        yield _Rich(progress, task)
