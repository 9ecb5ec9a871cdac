"""Metrics logging to ``metrics.csv`` and TensorBoard.

``metrics.csv`` has the columns ``iteration, phase`` followed by every metric name in the order it was
first logged; a row leaves the metrics it does not have empty. Values are written with Python's
shortest round-trip float representation, so identical numbers give identical files. When a new
metric name appears the whole file is rewritten atomically with the wider header. Only the process
of global rank 0 should own a logger.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from types import TracebackType
from typing import Any

from medssl.errors import MedsslInputError
from medssl.runtime.atomic import write_text_atomic
from medssl.runtime.rundir import RunDir

__all__ = ["MetricsLogger", "read_metrics"]

_FIXED = ("iteration", "phase")


def _format(value: float) -> str:
    return repr(float(value))


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header metric names and complete rows of a metrics CSV (a cut-off last line is dropped)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # a line cut off by a crash mid-write
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return [], []
    if tuple(header[:2]) != _FIXED:
        raise MedsslInputError(path, f"not a medssl metrics file (header starts with {header[:2]})")
    keys = header[2:]
    rows = []
    for record in reader:
        if len(record) != len(header):
            continue
        rows.append(dict(zip(header, record, strict=True)))
    return keys, rows


def _render(keys: list[str], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*_FIXED, *keys])
    for row in rows:
        writer.writerow([row.get(k, "") for k in (*_FIXED, *keys)])
    return buf.getvalue()


class MetricsLogger:
    """Append metric rows to ``metrics.csv`` and TensorBoard scalars ``<phase>/<name>``.

    Args:
        run_dir: the run (or its root folder); the CSV is ``run_dir/metrics.csv``.
        enable_tensorboard: also write TensorBoard event files under ``run_dir/tensorboard``.
    """

    def __init__(self, run_dir: RunDir | str | Path, enable_tensorboard: bool = True) -> None:
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
        self.path = self.run.metrics_csv
        self.enable_tensorboard = enable_tensorboard
        self._writer: Any = None
        self._purge_step: int | None = None
        self._keys: list[str] = _read_rows(self.path)[0] if self.path.is_file() else []

    @property
    def keys(self) -> list[str]:
        """Metric names of the CSV header, in first-logged order."""
        return list(self._keys)

    def log(self, iteration: int, values: dict[str, float], phase: str = "train") -> None:
        """Append one row ``(iteration, phase, values...)`` and the matching TensorBoard scalars."""
        clean = {str(k): float(v) for k, v in values.items()}
        if any(k in _FIXED for k in clean):
            raise ValueError(f"metric names {_FIXED} are reserved for the CSV's own columns")
        new = [k for k in clean if k not in self._keys]
        row = {"iteration": str(int(iteration)), "phase": str(phase)}
        row.update({k: _format(v) for k, v in clean.items()})
        if new or not self.path.is_file() or self.path.stat().st_size == 0:
            rows = _read_rows(self.path)[1] if self.path.is_file() else []
            self._keys.extend(new)
            write_text_atomic(self.path, _render(self._keys, [*rows, row]))
        else:
            line = _render(self._keys, [row]).split("\n", 1)[1]
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
        if self.enable_tensorboard:
            writer = self._tensorboard()
            for key, value in clean.items():
                if math.isfinite(value):
                    writer.add_scalar(f"{phase}/{key}", value, global_step=int(iteration))

    def truncate_after(self, iteration: int) -> None:
        """Drop every row logged after ``iteration`` (for resuming from that iteration's checkpoint).

        The header is rebuilt from the remaining rows, and TensorBoard events after ``iteration``
        are purged when the writer opens, so the outputs equal those of an uninterrupted run.
        """
        self._purge_step = int(iteration) + 1
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self.path.is_file():
            return
        _, rows = _read_rows(self.path)
        kept = [r for r in rows if int(r["iteration"]) <= iteration]
        keys: list[str] = []
        for row in kept:
            keys.extend(k for k, v in row.items() if k not in _FIXED and v != "" and k not in keys)
        self._keys = keys
        write_text_atomic(self.path, _render(keys, kept))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _tensorboard(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.run.tensorboard.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.run.tensorboard), purge_step=self._purge_step)
            self._purge_step = None
        return self._writer


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.csv``: ``iteration`` (int), ``phase`` (str) and the row's metrics (float).

    Metrics a row does not have are absent from its dictionary.

    Raises:
        MedsslInputError: the file is missing or is not a medssl metrics file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    if not path.is_file():
        raise MedsslInputError(path, "metrics file not found")
    _, rows = _read_rows(path)
    out: list[dict[str, Any]] = []
    for row in rows:
        try:
            parsed: dict[str, Any] = {"iteration": int(row["iteration"]), "phase": row["phase"]}
            parsed.update({k: float(v) for k, v in row.items() if k not in _FIXED and v != ""})
        except ValueError as err:
            raise MedsslInputError(path, f"malformed metrics row {row} ({err})") from None
        out.append(parsed)
    return out
