"""medssl.runtime.metrics_log: CSV layout, growing header, truncation for resume, TensorBoard."""

from __future__ import annotations

from pathlib import Path

import pytest

from medssl.errors import MedsslInputError
from medssl.runtime.metrics_log import MetricsLogger, read_metrics
from medssl.runtime.rundir import RunDir


def test_csv_rows_and_growing_header(tmp_path: Path) -> None:
    run = RunDir.prepare(tmp_path / "r", "new")
    with MetricsLogger(run, enable_tensorboard=False) as log:
        log.log(1, {"loss": 0.5, "lr": 0.01})
        log.log(2, {"loss": 0.25, "lr": 0.01})
        log.log(2, {"dice": 0.75}, phase="val")
        log.log(3, {"loss": 1 / 3, "lr": 0.005})
    assert run.metrics_csv.read_text() == (
        "iteration,phase,loss,lr,dice\n"
        "1,train,0.5,0.01,\n"
        "2,train,0.25,0.01,\n"
        "2,val,,,0.75\n"
        f"3,train,{1 / 3!r},0.005,\n"
    )
    rows = read_metrics(run.metrics_csv)
    assert rows[2] == {"iteration": 2, "phase": "val", "dice": 0.75}
    assert rows[3]["loss"] == 1 / 3  # exact float round trip
    assert read_metrics(run.root) == rows  # a run folder is accepted too
    with pytest.raises(ValueError, match="reserved"):
        MetricsLogger(run, enable_tensorboard=False).log(4, {"phase": 1.0})


def test_truncate_after_equals_uninterrupted(tmp_path: Path) -> None:
    def log_range(logger: MetricsLogger, its: range) -> None:
        for it in its:
            values = {"loss": 1.0 / it}
            if it >= 4:
                values["extra"] = float(it)  # a column that appears later
            logger.log(it, values)
            if it % 3 == 0:
                logger.log(it, {"dice": it / 10}, phase="val")

    full = RunDir.prepare(tmp_path / "full", "new")
    with MetricsLogger(full, enable_tensorboard=False) as log:
        log_range(log, range(1, 9))

    cut = RunDir.prepare(tmp_path / "cut", "new")
    with MetricsLogger(cut, enable_tensorboard=False) as log:
        log_range(log, range(1, 7))
    # a crash mid-write leaves a cut-off last line
    with open(cut.metrics_csv, "a") as fh:
        fh.write("7,train,0.14")
    with MetricsLogger(cut, enable_tensorboard=False) as log:  # resume from the checkpoint at 2
        log.truncate_after(2)
        assert log.keys == ["loss"]  # columns first seen after iteration 2 are gone
        assert [r["iteration"] for r in read_metrics(cut.metrics_csv)] == [1, 2]
        log_range(log, range(3, 9))
    assert cut.metrics_csv.read_bytes() == full.metrics_csv.read_bytes()


def test_reopen_appends_with_existing_header(tmp_path: Path) -> None:
    run = RunDir.prepare(tmp_path / "r", "new")
    MetricsLogger(run, enable_tensorboard=False).log(1, {"a": 1.0, "b": 2.0})
    again = MetricsLogger(run, enable_tensorboard=False)
    assert again.keys == ["a", "b"]
    again.log(2, {"b": 3.0})
    assert run.metrics_csv.read_text() == "iteration,phase,a,b\n1,train,1.0,2.0\n2,train,,3.0\n"


def test_tensorboard_scalars_and_purge(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDir.prepare(tmp_path / "r", "new")
    with MetricsLogger(run) as log:
        for it in (1, 2, 3):
            log.log(it, {"loss": float(it)})
        log.log(3, {"dice": 0.5}, phase="val")
    with MetricsLogger(run) as log:
        log.truncate_after(1)
        log.log(2, {"loss": 20.0})
    events = EventAccumulator(str(run.tensorboard))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 20.0)]


def test_read_metrics_errors(tmp_path: Path) -> None:
    with pytest.raises(MedsslInputError, match="metrics file not found"):
        read_metrics(tmp_path / "metrics.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(MedsslInputError, match="not a medssl metrics file"):
        read_metrics(bad)
