"""``medssl localize run / evaluate / backends`` end to end on synthesized atrium3d (3D) and chest2d (2D) data."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medssl.cli import main
from medssl.data.synthetic import synthesize
from medssl.localize.structures import SentenceEncoder
from medssl.metrics.localization import normalized_surface_dice

LA = "A cardiac MRI highlighting the left atrium"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {"atrium3d": synthesize("atrium3d", root / "atrium3d", n=3, seed=1, shape=(24, 24, 16)),
            "chest2d": synthesize("chest2d", root / "chest2d", n=3, seed=1, shape=(40, 40))}


@pytest.fixture(scope="module")
def atrium_cache(data: dict[str, Path], encoder: SentenceEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("atrium") / "cache"
    main(["localize", "run", "--data", str(data["atrium3d"]), "--prompt", LA, "--cache", str(cache),
          "--preview", "1", "--quiet"])
    return cache


def _exit_code(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _check_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[1] >= 300 and arr.shape[0] >= 150 and arr.std() > 10  # a real drawing, not a blank
    return arr


def test_run_3d_then_rerun_hits(atrium_cache: Path, data: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    entries = sorted((atrium_cache / "entries").iterdir())
    assert len([p for p in entries if p.name.endswith(".roi.nii.gz")]) == 3
    before = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in entries}
    code = _exit_code(["localize", "run", "--data", str(data["atrium3d"]), "--prompt", LA, "--cache",
                       str(atrium_cache), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Localized 3 of 3 images" in out and "(0 computed, 3 cache hits)" in out
    after = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
             for p in sorted((atrium_cache / "entries").iterdir())}
    assert after == before  # identical ROIs, nothing rewritten
    previews = list((atrium_cache / "previews").glob("*.png"))
    assert [p.name.split("_")[:2] for p in previews] == [["case", "0000"]]
    _check_png(previews[0])
    code = _exit_code(["localize", "run", "--data", str(data["atrium3d"]), "--prompt", LA, "--cache",
                       str(atrium_cache), "--shard", "1/2", "--quiet"])
    assert code == 0 and "Localized 1 of 1 images" in capsys.readouterr().out


def test_run_2d_both_lungs_failures_and_strict(data: dict[str, Path], encoder: SentenceEncoder, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    cache = tmp_path / "cache"
    argv = ["localize", "run", "--prompt", "both lungs", "--param", "max_components=2", "--cache", str(cache),
            "--quiet"]
    assert _exit_code([*argv, "--data", str(data["chest2d"]), "--preview", "3"]) == 0
    assert "(3 computed, 0 cache hits)" in capsys.readouterr().out
    sidecars = [json.loads(p.read_text()) for p in sorted((cache / "entries").glob("*.json"))]
    assert len(sidecars) == 3
    for sidecar in sidecars:
        assert len(sidecar["boxes"]) == 2
        assert {m["name"] for m in sidecar["provenance"]["matched"]} == {"left lung", "right lung"}
        assert sidecar["key_parts"]["params"]["max_components"] == 2
    previews = sorted((cache / "previews").glob("*.png"))
    assert len(previews) == 3
    for preview in previews:
        _check_png(preview)

    broken = shutil.copytree(data["chest2d"], tmp_path / "broken")
    bad = broken / "images" / "case_0001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    assert _exit_code([*argv, "--data", str(broken)]) == 1
    captured = capsys.readouterr()
    assert "Localized 2 of 3 images" in captured.out and "(0 computed, 2 cache hits)" in captured.out
    assert "1 images FAILED" in captured.out and str(bad) in captured.out
    assert f"localize: failed {bad}" in captured.err

    assert _exit_code([*argv, "--data", str(broken), "--strict"]) == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medssl: error:")]
    assert len(err_lines) == 1 and str(bad) in err_lines[0]


def test_evaluate_equals_an_independent_computation(atrium_cache: Path, data: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    out_dir = tmp_path / "eval"
    code = _exit_code(["localize", "evaluate", "--cache", str(atrium_cache), "--labels",
                       str(data["atrium3d"] / "labels"), "--out", str(out_dir), "--tolerance", "2.5"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| product | Dice | NSD | precision | recall |" in printed
    with open(out_dir / "localization_per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted({r["product"] for r in rows}) == ["boxes", "coarse"]  # the structures backend has no SAM step
    assert len(rows) == 6
    per_product: dict[str, list[list[float]]] = {"boxes": [], "coarse": []}
    for sidecar_path in sorted((atrium_cache / "entries").glob("*.json")):
        sidecar = json.loads(sidecar_path.read_text())
        case = Path(sidecar["image_source"]).name.split(".")[0]
        label_img = nib.load(str(data["atrium3d"] / "labels" / f"{case}.nii.gz"))
        gt = np.asarray(label_img.dataobj) != 0
        spacing = tuple(float(s) for s in label_img.header.get_zooms()[:3])
        roi = np.asarray(nib.load(str(atrium_cache / "entries" / sidecar["roi_file"])).dataobj) != 0
        with np.load(atrium_cache / "entries" / sidecar["intermediates"]["file"]) as npz:
            coarse = npz["coarse_mask"].astype(bool)
        for product, pred in (("boxes", roi), ("coarse", coarse)):
            inter = int((pred & gt).sum())
            expected = [2 * inter / (pred.sum() + gt.sum()), normalized_surface_dice(pred, gt, 2.5, spacing),
                        inter / pred.sum(), inter / gt.sum()]
            row = next(r for r in rows if r["key"] == sidecar["key"] and r["product"] == product)
            got = [float(row[m]) for m in ("dice", "nsd", "precision", "recall")]
            np.testing.assert_allclose(got, expected, rtol=1e-9)
            per_product[product].append(expected)
    summary = json.loads((out_dir / "localization.json").read_text())
    (group,) = summary["groups"]
    assert group["images"] == 3 and group["prompt"] == LA and group["backend"] == "structures"
    for product, values in per_product.items():
        arr = np.asarray(values)
        for j, metric in enumerate(("dice", "nsd", "precision", "recall")):
            stats = group["products"][product][metric]
            assert stats["mean"] == pytest.approx(arr[:, j].mean()) and stats["std"] == pytest.approx(arr[:, j].std())
        recall_mean = arr[:, 3].mean()
        assert f"{recall_mean:.3f} ± {arr[:, 3].std():.3f} |" in (out_dir / "localization.md").read_text()
    assert per_product["boxes"][0][3] > 0.9  # boxes around the matched structures hold the labelled atrium


def test_backends_and_user_errors(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _exit_code(["localize", "backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split(" ")[0] for line in lines]
    assert names[:2] == ["structures", "files"] and {"biomedclip-sam", "clipseg"} <= set(names)
    assert "all-MiniLM-L6-v2" in lines[0] and "BiomedCLIP" in lines[names.index("biomedclip-sam")]
    base = ["localize", "run", "--data", str(data["chest2d"]), "--prompt", "lungs", "--cache", str(tmp_path / "c")]
    for extra, fragment in ((["--shard", "2/2"], "--shard"), (["--param", "oops"], "--param"),
                            (["--backend", "nope"], "unknown localization backend"),
                            (["--split", "missing.list"], "case list not found")):
        assert _exit_code([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
