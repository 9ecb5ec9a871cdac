"""Semi-supervised engine: splits, batches, training / resume / evaluation / prediction end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medssl.cli import main
from medssl.config import load_config
from medssl.data.samplers import TwoStreamBatchSampler
from medssl.engine.semi import (
    SemiDataConfig,
    SemiTrainConfig,
    build_semi_batch_fn,
    evaluate_run,
    open_semi_data,
    predict_file,
    train_semi,
)
from medssl.errors import MedsslInputError
from medssl.runtime.metrics_log import read_metrics
from shared_paths import SHARED

TINY = {
    "method_config": {"network": {"base_width": 4}},
    "data": {"labeled": 2, "n_val": 1, "patch": [32, 32, 16], "labeled_bs": 1, "unlabeled_bs": 1},
    "max_iterations": 4,
    "inference": {"patch": [32, 32, 16], "stride": [16, 16, 16]},
    "runtime": {"checkpoint_every": 2, "log_every": 1, "quiet": True, "accelerator": "cpu"},
}


@pytest.fixture(scope="module")
def atrium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medssl.data.synthetic import synthesize

    return synthesize("atrium3d", tmp_path_factory.mktemp("data") / "atrium3d", n=6, seed=3, shape=(40, 40, 24))


def _cfg(atrium: Path, runs: Path, name: str, method: str = "corn", **extra: object) -> SemiTrainConfig:
    base = json.loads(json.dumps(TINY))
    base["runtime"].update({"name": name, "runs_root": str(runs)})
    base["data"]["spec"] = f"folder:{atrium}"
    base["method"] = method
    overrides = [f"{k}={v}" for k, v in extra.items()]
    return load_config(SemiTrainConfig, base=base, overrides=overrides)


def test_splits_follow_the_training_list(atrium: Path) -> None:
    train_ids = (atrium / "train.list").read_text().split()
    dataset, splits = open_semi_data(SemiDataConfig(spec=f"folder:{atrium}", labeled=2, n_val=1))
    assert dataset.case_ids == train_ids  # ordered as train.list, test cases excluded
    assert splits.labeled == [0, 1]
    assert splits.unlabeled == list(range(2, len(train_ids) - 1))
    assert splits.val == [len(train_ids) - 1]


def test_left_atrium_protocol_split_on_the_real_list() -> None:
    cfg = SemiDataConfig(spec=f"la:{SHARED / 'data' / 'la'}", split_file=SHARED / "data" / "la_splits" / "train.list",
                         labeled=8)
    dataset, splits = open_semi_data(cfg)
    listed = [line.split("/")[-2] if "/" in line else line
              for line in (SHARED / "data" / "la_splits" / "train.list").read_text().split()]
    assert len(dataset) == 80
    assert (len(splits.labeled), len(splits.unlabeled), len(splits.val)) == (8, 56, 16)
    assert [dataset.case_ids[i] for i in splits.labeled] == listed[:8]
    assert [dataset.case_ids[i] for i in splits.val] == listed[64:]
    case = dataset.load(splits.labeled[0])  # a real volume: z-scored image, binary label
    assert case.image.dtype == np.float32 and set(np.unique(case.label)) == {0, 1}


def test_too_many_labeled_is_a_clear_error(atrium: Path) -> None:
    with pytest.raises(MedsslInputError, match="labeled volumes requested"):
        open_semi_data(SemiDataConfig(spec=f"folder:{atrium}", labeled=5, n_val=1))


def test_batches_are_a_pure_function_of_the_iteration(atrium: Path) -> None:
    dataset, splits = open_semi_data(SemiDataConfig(spec=f"folder:{atrium}", labeled=2, n_val=1))
    sampler = TwoStreamBatchSampler(splits.labeled, splits.unlabeled, 1, 2, seed=5)
    fn = build_semi_batch_fn(dataset, sampler, (32, 32, 16), torch.device("cpu"))
    a, b, c = fn(3), fn(3), fn(4)
    assert torch.equal(a.image, b.image) and torch.equal(a.label, b.label)
    assert not torch.equal(a.image, c.image)
    assert a.image.shape == (3, 1, 32, 32, 16) and a.label.shape == (3, 32, 32, 16)
    assert a.labeled_bs == 1 and int(a.index[0]) in splits.labeled
    assert all(int(i) in splits.unlabeled for i in a.index[1:])
    assert int(a.label[1:].sum()) == 0  # labels of unlabeled rows never reach a method


def test_train_resume_equals_uninterrupted(atrium: Path, tmp_path: Path) -> None:
    straight = train_semi(_cfg(atrium, tmp_path, "straight", evaluate_after=False))
    train_semi(_cfg(atrium, tmp_path, "split", max_iterations=2, evaluate_after=False))
    resumed = train_semi(_cfg(atrium, tmp_path, "split", evaluate_after=False), mode="resume")
    assert resumed.loop.start_iteration == 2
    rows_a = (straight.run_dir / "metrics.csv").read_text()
    rows_b = (resumed.run_dir / "metrics.csv").read_text()
    assert rows_a == rows_b
    keys = read_metrics(straight.run_dir / "metrics.csv")[-1].keys()
    assert {"loss", "loss_sup", "loss_cons", "loss_coral", "w_cons", "w_coral", "lr"} <= set(keys)
    wa = torch.load(straight.run_dir / "checkpoints" / "final.pt", weights_only=True)["model"]
    wb = torch.load(resumed.run_dir / "checkpoints" / "final.pt", weights_only=True)["model"]
    for k, v in wa.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, wb[k]), k


def test_cli_train_evaluate_predict(atrium: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["semi", "train", "--method", "dual_branch", "--data", f"folder:{atrium}", "--labeled", "2",
            "--runs-root", str(tmp_path), "--name", "cli", "--quiet", "--accelerator", "cpu"]
    for key, value in [("method_config.network.base_width", 4), ("data.n_val", 1), ("data.patch", "[32,32,16]"),
                       ("data.labeled_bs", 1), ("data.unlabeled_bs", 1), ("max_iterations", 2),
                       ("inference.patch", "[32,32,16]"), ("inference.stride", "[16,16,16]")]:
        args += ["--set", f"{key}={value}"]
    main(args)
    run = tmp_path / "cli"
    for name in ("config.yaml", "manifest.json", "metrics.csv", "checkpoints/final.pt"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["seed"] == 1337 and manifest["data_fingerprint"].startswith("sha256:")
    assert manifest["extra"]["splits"]["labeled"] == (atrium / "train.list").read_text().split()[:2]
    assert (run / "eval_final" / "summary.md").is_file()  # validation after training

    # a second train into the same run is refused without --resume / --overwrite
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    assert "already exists" in capsys.readouterr().err

    main(["semi", "evaluate", str(run), "--cases", str(atrium / "test.list"), "--quiet"])
    out_dir = run / "eval_final_test"
    rows = list(csv.DictReader((out_dir / "metrics_per_case.csv").open()))
    assert [r["case_id"] for r in rows] == (atrium / "test.list").read_text().split()
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["checkpoint"].endswith("final.pt")

    case = (atrium / "test.list").read_text().split()[0]
    pred = tmp_path / "pred.nii.gz"
    main(["semi", "predict", str(run), "--input", str(atrium / "images" / f"{case}.nii.gz"), "--out", str(pred)])
    src = nib.load(atrium / "images" / f"{case}.nii.gz")
    out = nib.load(pred)
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1}


def test_unknown_method_and_bad_values_exit_2(atrium: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for args, expected in [
        (["--method", "nope"], "method"),
        (["--method", "corn", "--set", "optim.lr=abc"], "optim.lr"),
        (["--method", "corn", "--labeled", "40"], "labeled"),
    ]:
        with pytest.raises(SystemExit) as stop:
            main(["semi", "train", "--data", f"folder:{atrium}", "--runs-root", str(tmp_path), "--name", "bad",
                  *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and expected in err[0], err
        assert not (tmp_path / "bad").exists()  # nothing written


def test_init_encoder_loads_into_both_branches(atrium: Path, tmp_path: Path) -> None:
    from medssl.models.vnet import VNet

    encoder = VNet(1, 2, base_width=4).encoder
    torch.nn.init.constant_(next(encoder.parameters()), 0.25)
    path = tmp_path / "enc.pt"
    torch.save(encoder.state_dict(), path)
    cfg = _cfg(atrium, tmp_path, "init", max_iterations=1, evaluate_after=False, init_encoder=str(path))
    from medssl.engine import semi
    from medssl.methods import create_method

    method = create_method(cfg.method, semi.resolve_method_settings(cfg).method_config)
    report = semi.load_encoder_init(method, path)
    assert report["modules"] == ["net.branch1.encoder", "net.branch2.encoder"]
    for branch in (method.net.branch1, method.net.branch2):
        assert torch.all(next(branch.encoder.parameters()) == 0.25)

    wrong = VNet(1, 2, base_width=8).encoder
    torch.save(wrong.state_dict(), tmp_path / "wrong.pt")
    with pytest.raises(MedsslInputError, match="do not fit"):
        semi.load_encoder_init(method, tmp_path / "wrong.pt")


def test_evaluate_any_case_list_on_real_left_atrium(tmp_path: Path) -> None:
    """A run trained on 2x-downsampled real volumes scores any case list with the same command."""
    ids = [line.split("/")[-2] if "/" in line else line
           for line in (SHARED / "data" / "la_splits" / "train.list").read_text().split()]
    split = tmp_path / "train.list"
    split.write_text("\n".join(ids[:4]) + "\n")
    base = json.loads(json.dumps(TINY))
    base["runtime"].update({"name": "la", "runs_root": str(tmp_path)})
    base["data"].update({"spec": f"la:{SHARED / 'data' / 'la'}", "split_file": str(split), "zoom": 0.5,
                         "labeled": 2, "n_val": 1})
    base["max_iterations"] = 2
    base["evaluate_after"] = False
    result = train_semi(load_config(SemiTrainConfig, base=base))
    cases = tmp_path / "some.list"
    cases.write_text(ids[70] + "\n")
    evaluation = evaluate_run(result.run_dir, cases=cases, quiet=True)
    assert [r["case_id"] for r in evaluation.per_case] == [ids[70]]
    assert 0.0 <= evaluation.mean("dice") <= 1.0
    # predictions come back on the source grid (0.625 mm voxels), like `semi predict`
    pred = nib.load(evaluation.files[f"prediction:{ids[70]}"])
    assert np.allclose(np.abs(np.diag(pred.affine))[:3], 0.625, atol=1e-6)
    out = predict_file(result.run_dir, SHARED / "data" / "la" / ids[70] / "mri_norm2.h5", tmp_path / "p.nii.gz")
    assert nib.load(out).shape == pred.shape  # (predict re-normalises the scan: labels may differ slightly)


def test_ddp_two_processes_train_corn(atrium: Path, tmp_path: Path) -> None:
    """CORN through Fabric DDP on 2 CPU processes (gloo): one metrics file, one final checkpoint."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "medssl.cli", "semi", "train", "--config", "atrium3d_corn",
           "--data", f"folder:{atrium}", "--labeled", "2", "--iterations", "2", "--runs-root", str(tmp_path),
           "--name", "ddp", "--quiet", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
           "--set", "method_config.network.base_width=4", "--set", "data.labeled_bs=1",
           "--set", "data.unlabeled_bs=1", "--set", "data.patch=[32,32,16]", "--set", "evaluate_after=false",
           "--set", "data.n_val=0",
           "--set", "runtime.log_every=1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run: ") == 1  # rank 0 reports
    rows = read_metrics(tmp_path / "ddp" / "metrics.csv")
    assert [r["iteration"] for r in rows] == [1, 2]
    manifest = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    assert "2" in json.dumps(manifest["device"])
    assert (tmp_path / "ddp" / "checkpoints" / "final.pt").is_file()


def test_cli_resume_needs_only_the_run_name(atrium: Path, tmp_path: Path) -> None:
    args = ["semi", "train", "--method", "supervised", "--data", f"folder:{atrium}", "--labeled", "2",
            "--runs-root", str(tmp_path), "--name", "r", "--quiet", "--accelerator", "cpu",
            "--set", "method_config.network.base_width=4", "--set", "data.n_val=0", "--set", "data.patch=[32,32,16]",
            "--set", "data.labeled_bs=1", "--set", "runtime.log_every=1", "--iterations", "2"]
    main(args)
    main(["semi", "train", "--name", "r", "--runs-root", str(tmp_path), "--resume", "--iterations", "3", "--quiet"])
    rows = read_metrics(tmp_path / "r" / "metrics.csv")
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert len(manifest["resumes"]) == 1


def test_zoomed_run_is_scored_on_the_source_grid(atrium: Path, tmp_path: Path) -> None:
    """A run trained on 2x-downsampled volumes: predictions come back on each case's source grid (shape
    and affine of its label) and the reported metrics equal an independent computation on those files."""
    from medpy.metric import binary as medpy_binary

    from medssl.data.io import read_image

    # lr ~ 0 keeps the network near its random initialisation: a noisy, non-empty foreground to score
    cfg = _cfg(atrium, tmp_path, "zoomed", method="supervised", **{"data.zoom": 0.5, "max_iterations": 2,
                                                                  "optim.lr": 1e-9, "evaluate_after": "false"})
    run = train_semi(cfg).run_dir
    main(["semi", "evaluate", str(run), "--quiet"])
    main(["semi", "evaluate", str(run), "--quiet", "--reduced-grid"])
    source = json.loads((run / "eval_final" / "summary.json").read_text())
    assert source["scoring_grid"] == {"grid": "source", "training_zoom": 0.5}
    rows = list(csv.DictReader((run / "eval_final" / "metrics_per_case.csv").open()))
    val_id = (atrium / "train.list").read_text().split()[-1]
    assert [r["case_id"] for r in rows] == [val_id]
    label = read_image(atrium / "labels" / f"{val_id}.nii.gz", ndim=3)
    pred_img = nib.load(run / "eval_final" / "predictions" / f"{val_id}.nii.gz")
    pred = np.asarray(pred_img.dataobj) > 0
    gt = np.asarray(label.array) > 0
    assert pred.shape == gt.shape == (40, 40, 24)
    np.testing.assert_allclose(pred_img.affine, label.affine, atol=1e-5)
    assert 0 < pred.sum() < pred.size
    row = {k: float(v) for k, v in rows[0].items() if k in ("dice", "jaccard", "hd95_mm", "asd_mm")}
    assert row["dice"] == pytest.approx(2 * (pred & gt).sum() / (pred.sum() + gt.sum()), abs=1e-9)
    assert row["jaccard"] == pytest.approx((pred & gt).sum() / (pred | gt).sum(), abs=1e-9)
    assert row["hd95_mm"] == pytest.approx(medpy_binary.hd95(pred, gt, voxelspacing=label.spacing), rel=1e-6)
    assert row["asd_mm"] == pytest.approx(medpy_binary.asd(pred, gt, voxelspacing=label.spacing), rel=1e-6)
    # the reduced-grid option scores on the 2x-down grid (labels resampled), in its own folder
    reduced = json.loads((run / "eval_final_reduced" / "summary.json").read_text())
    assert reduced["scoring_grid"] == {"grid": "reduced", "training_zoom": 0.5}
    small = nib.load(run / "eval_final_reduced" / "predictions" / f"{val_id}.nii.gz")
    assert small.shape == (20, 20, 12)


def test_same_command_twice_gives_identical_metrics(atrium: Path, tmp_path: Path) -> None:
    """Reproducibility on one machine: the same command (same seed) gives the same training curve and
    bit-identical evaluation metrics."""
    def run(name: str) -> Path:
        args = ["semi", "train", "--method", "corn", "--data", f"folder:{atrium}", "--labeled", "2",
                "--runs-root", str(tmp_path), "--name", name, "--quiet", "--accelerator", "cpu", "--seed", "7"]
        for key, value in [("method_config.network.base_width", 4), ("data.n_val", 1),
                           ("data.patch", "[32,32,16]"), ("data.labeled_bs", 1), ("data.unlabeled_bs", 1),
                           ("max_iterations", 3), ("inference.patch", "[32,32,16]"),
                           ("inference.stride", "[16,16,16]")]:
            args += ["--set", f"{key}={value}"]
        main(args)
        return tmp_path / name

    a, b = run("first"), run("second")
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    per_case_a = (a / "eval_final" / "metrics_per_case.csv").read_text()
    assert per_case_a == (b / "eval_final" / "metrics_per_case.csv").read_text()
    assert len(per_case_a.splitlines()) == 2  # header + the one validation case
