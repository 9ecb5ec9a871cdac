"""``segmenter`` backend: a trained medssl run's predicted classes, named, answer prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medssl.config import load_config
from medssl.data.io import read_image
from medssl.engine.semi import RunPredictor, SemiTrainConfig, train_semi
from medssl.errors import MedsslInputError
from medssl.localize import create_localizer
from medssl.localize.postprocess import boxes_to_mask, component_boxes
from medssl.localize.segmenter import parse_class_names


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(atrium3d data, a 2-iteration supervised run trained on it)."""
    from medssl.data.synthetic import synthesize

    tmp = tmp_path_factory.mktemp("seg")
    data = synthesize("atrium3d", tmp / "atrium3d", n=5, seed=4, shape=(32, 32, 16))
    base = {"method": "supervised", "method_config": {"network": {"base_width": 4}},
            "data": {"spec": f"folder:{data}", "labeled": 2, "n_val": 1, "patch": [32, 32, 16], "labeled_bs": 1,
                     "unlabeled_bs": 0},
            "max_iterations": 2, "evaluate_after": False,
            "inference": {"patch": [32, 32, 16], "stride": [16, 16, 16]},
            "runtime": {"name": "segmenter", "runs_root": str(tmp / "runs"), "checkpoint_every": 2, "quiet": True,
                        "accelerator": "cpu"}}
    return data, train_semi(load_config(SemiTrainConfig, base=base)).run_dir


def test_class_names_forms() -> None:
    assert parse_class_names("left atrium") == {1: "left atrium"}
    assert parse_class_names("1=left atrium, 2=aorta") == {1: "left atrium", 2: "aorta"}
    assert parse_class_names({"2": "aorta"}) == {2: "aorta"}
    for bad in ("0=background", "1=a,1=b", "x=a", ""):
        with pytest.raises(MedsslInputError):
            parse_class_names(bad)


def test_roi_is_the_boxes_of_the_predicted_class(trained: tuple[Path, Path]) -> None:
    data, run = trained
    image = read_image(sorted((data / "images").iterdir())[0])
    loc = create_localizer("segmenter", run=str(run), names="left atrium")
    result = loc.localize(image, "A cardiac MRI highlighting the left atrium")
    # independent: the same run's prediction, boxes around its foreground components
    predicted = RunPredictor(run).labels(image.array) == 1
    assert predicted.any()  # a near-random 2-iteration model still predicts some foreground
    expected = boxes_to_mask(component_boxes(predicted), image.spatial_shape)
    assert np.array_equal(result.roi, expected)
    assert np.array_equal(result.coarse_mask, predicted)
    prov = result.provenance
    assert prov["backend"] == "segmenter" and prov["matched"][0]["name"] == "left atrium"
    assert prov["predicted_voxels"] == {"1": int(predicted.sum())}
    assert prov["params"]["checkpoint_digest"].startswith("sha256:")
    json.dumps(prov)  # cacheable


def test_unmatched_prompt_and_bad_inputs_are_clear_errors(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    image = read_image(sorted((data / "images").iterdir())[0])
    loc = create_localizer("segmenter", run=str(run), names="left atrium")
    with pytest.raises(MedsslInputError, match="threshold|match"):
        loc.localize(image, "A photograph of a sailing boat on the sea")
    with pytest.raises(MedsslInputError, match="predicts classes 0..1"):
        create_localizer("segmenter", run=str(run), names="1=left atrium,2=aorta")
    with pytest.raises(MedsslInputError, match="not a medssl run"):
        create_localizer("segmenter", run=str(tmp_path), names="left atrium")
    bad = image.array.astype(np.float32).copy()
    bad[0, 0, 0] = np.nan
    from medssl.data.io import ImageData

    with pytest.raises(MedsslInputError, match="NaN"):
        loc.localize(ImageData(array=bad, affine=image.affine, spacing=image.spacing, source="x.nii.gz"), "left atrium")


def test_localize_run_cli_fills_the_cache(trained: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from medssl.cli import main
    from medssl.localize import RoiCache

    data, run = trained
    args = ["localize", "run", "--data", str(data), "--prompt", "A cardiac MRI highlighting the left atrium",
            "--cache", str(tmp_path / "roi"), "--backend", "segmenter", "--param", f"run={run}",
            "--param", "names=left atrium", "--quiet"]
    main(args)
    images = sorted((data / "images").iterdir())
    assert f"0 of {len(images)}" not in capsys.readouterr().out
    cache = RoiCache(tmp_path / "roi")
    for path in images:  # every image has its entry, made by the segmenter and equal to a direct call
        entry = cache.lookup(read_image(path), backend="segmenter")
        assert entry is not None and entry.provenance["backend"] == "segmenter"
    main(args)  # the same command again: every image comes from the cache
    assert f"0 computed, {len(images)} cache hits" in capsys.readouterr().out
