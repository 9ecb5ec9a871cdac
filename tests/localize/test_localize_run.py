"""run_localization: dataset layouts, cache reuse, misses on every input change, shards and worker processes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medssl.data.io import read_image, write_nifti
from medssl.data.synthetic import synthesize
from medssl.errors import MedsslInputError
from medssl.localize import RoiCache
from medssl.localize.run import (
    LocalizeRunConfig,
    backend_context,
    distributed_shard,
    list_images,
    run_localization,
)
from medssl.localize.structures import SentenceEncoder, StructuresLocalizer

LA = "A cardiac MRI highlighting the left atrium"


@pytest.fixture(scope="module")
def atrium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize("atrium3d", tmp_path_factory.mktemp("data") / "atrium3d", n=3, seed=0, shape=(24, 24, 16))


@pytest.fixture(scope="module")
def first_run(atrium: Path, encoder: SentenceEncoder, tmp_path_factory: pytest.TempPathFactory):
    cfg = LocalizeRunConfig(data=atrium, prompt=LA, cache=tmp_path_factory.mktemp("run") / "cache", quiet=True)
    return cfg, run_localization(cfg)


def _entries(cache: Path) -> dict[str, np.ndarray]:
    """key -> ROI of every complete entry."""
    roi_cache = RoiCache(cache)
    return {e["key"]: roi_cache.load_entry(e).roi for e in roi_cache.valid_entries()}


def test_run_fills_the_cache_with_the_backend_rois(first_run, atrium: Path, encoder: SentenceEncoder) -> None:
    cfg, summary = first_run
    assert (summary.images, summary.computed, summary.cache_hits, summary.failed) == (3, 3, 0, [])
    cache = RoiCache(cfg.cache)
    direct = StructuresLocalizer(encoder=encoder)
    fractions = []
    for i, record in enumerate(summary.records):
        image_path = atrium / "images" / f"case_000{i}.nii.gz"
        assert record["file"] == str(image_path) and record["index"] == i and not record["cached"]
        expected = direct.localize(read_image(image_path), LA)  # the backend itself, no cache, no layout help
        entry = json.loads((cfg.cache / "entries" / f"{record['key']}.json").read_text())
        np.testing.assert_array_equal(cache.load_entry(entry).roi, expected.roi)
        stored = cache.load_entry(entry, with_intermediates=True)
        np.testing.assert_array_equal(stored.coarse_mask, expected.coarse_mask)
        smap = atrium / "structures" / f"case_000{i}.nii.gz"
        assert entry["key_parts"]["context"] == {
            "structure_names": {"file_sha256": hashlib.sha256((atrium / "structures.json").read_bytes()).hexdigest()},
            "structures": {"file_sha256": hashlib.sha256(smap.read_bytes()).hexdigest()}}
        assert entry["image_source"] == str(image_path)
        fractions.append(expected.roi.mean())
    assert summary.mean_roi_fraction == pytest.approx(np.mean(fractions))
    assert summary.empty_rois == 0
    manifest = json.loads((cfg.cache / "manifest.json").read_text())
    assert manifest["entries"] == 3 and manifest["prompts"] == {LA: 3} and summary.manifest == manifest
    run_file = json.loads(Path(summary.summary_files[0]).read_text())
    assert Path(summary.summary_files[0]).parent == cfg.cache / "runs"
    assert Path(summary.summary_files[0]).name.endswith("_shard0.json")
    assert (run_file["computed"], run_file["failed"], run_file["shard"]) == (3, 0, [0, 1])


def test_rerun_is_all_cache_hits(first_run) -> None:
    cfg, summary = first_run
    before = _entries(cfg.cache)
    again = run_localization(cfg)
    assert (again.computed, again.cache_hits) == (0, 3)
    assert [r["key"] for r in again.records] == [r["key"] for r in summary.records]
    after = _entries(cfg.cache)
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    assert len(list((cfg.cache / "runs").glob("*_shard0.json"))) >= 2


def test_prompt_param_and_structures_changes_are_misses(first_run, atrium: Path, tmp_path: Path) -> None:
    cfg, _ = first_run
    one = [atrium / "images" / "case_0001.nii.gz"]
    prompt = run_localization(cfg.model_copy(update={"data": one, "prompt": "the left atrium"}))
    assert (prompt.computed, prompt.cache_hits) == (1, 0)
    param = run_localization(cfg.model_copy(update={"data": one, "params": {"expand_ratio": 1.25}}))
    assert (param.computed, param.cache_hits) == (1, 0)
    same = run_localization(cfg.model_copy(update={"data": one}))
    assert (same.computed, same.cache_hits) == (0, 1)
    # a copy of the dataset whose case_0002 structure map differs in one voxel far from the atrium
    copy = shutil.copytree(atrium, tmp_path / "copy")
    smap_path = copy / "structures" / "case_0002.nii.gz"
    smap = read_image(smap_path)
    arr = smap.array.copy()
    arr[0, 0, 0] = 8 if arr[0, 0, 0] != 8 else 7  # "spine" or "pulmonary artery": not matched by the prompt
    write_nifti(smap_path, arr, smap.affine)
    edited = run_localization(cfg.model_copy(update={"data": [copy]}))
    assert (edited.computed, edited.cache_hits) == (1, 2)
    assert [r["cached"] for r in edited.records] == [True, True, False]
    (copy / "structures.json").write_text(json.dumps(json.loads((copy / "structures.json").read_text()), indent=4))
    (copy / "one.list").write_text("case_0000\n")
    names = run_localization(cfg.model_copy(update={"data": [copy], "split": Path("one.list")}))
    assert (names.images, names.computed) == (1, 1)


def test_two_shards_fill_the_same_cache_as_one_process(first_run, tmp_path: Path) -> None:
    cfg, summary = first_run
    sharded = tmp_path / "sharded"
    parts = [run_localization(cfg.model_copy(update={"cache": sharded, "shard_index": i, "shard_count": 2}))
             for i in (0, 1)]
    assert [p.images for p in parts] == [2, 1]  # images 0, 2 and image 1
    assert [r["index"] for r in parts[0].records] == [0, 2] and [r["index"] for r in parts[1].records] == [1]
    assert sorted(p.name.split("_")[-1] for p in (sharded / "runs").iterdir()) == ["shard0.json", "shard1.json"]
    one, two = _entries(cfg.cache), _entries(sharded)
    expected = {r["key"] for r in summary.records}
    assert expected <= one.keys() and set(two) == expected
    for key in expected:
        np.testing.assert_array_equal(one[key], two[key])
    assert json.loads((sharded / "manifest.json").read_text())["entries"] == 3


def _h5_dataset(root: Path, n: int = 3) -> Path:
    """Tiny 2D images and ROI maps as HDF5 files (read with h5py alone: spawned workers start fast)."""
    import h5py

    rng = np.random.default_rng(0)
    for folder in ("images", "maps"):
        (root / folder).mkdir(parents=True)
    for i in range(n):
        roi = np.zeros((12, 10), np.uint8)
        roi[i:i + 4, 2 + i:7] = 1
        for folder, arr in (("images", rng.random((12, 10)).astype(np.float32)), ("maps", roi)):
            with h5py.File(root / folder / f"case_{i}.h5", "w") as h5:
                h5["image"] = arr
    return root


def test_worker_processes_match_one_process(tmp_path: Path) -> None:
    data = _h5_dataset(tmp_path / "data")
    base = LocalizeRunConfig(data=data, prompt="any", backend="files", params={"root": str(data / "maps")},
                             cache=tmp_path / "single", quiet=True)
    single = run_localization(base)
    spawned = run_localization(base.model_copy(update={"cache": tmp_path / "spawned", "devices": 2}))
    assert (spawned.images, spawned.computed, spawned.shards) == (3, 3, 2)
    assert [r["key"] for r in spawned.records] == [r["key"] for r in single.records]
    assert [r["index"] for r in spawned.records] == [0, 1, 2]
    one, two = _entries(tmp_path / "single"), _entries(tmp_path / "spawned")
    assert one.keys() == two.keys() and len(one) == 3
    for i, record in enumerate(spawned.records):  # the files backend's ROI is the map itself
        expected = np.zeros((12, 10), bool)
        expected[i:i + 4, 2 + i:7] = True
        np.testing.assert_array_equal(one[record["key"]], expected)
        np.testing.assert_array_equal(two[record["key"]], expected)
    assert sorted(p.name.split("_")[-1] for p in (tmp_path / "spawned" / "runs").iterdir()) == \
        ["shard0.json", "shard1.json"]
    assert json.loads((tmp_path / "spawned" / "manifest.json").read_text())["entries"] == 3


def test_inputs_layouts_splits_and_errors(atrium: Path, tmp_path: Path) -> None:
    images = sorted((atrium / "images").iterdir())
    assert list_images([atrium]) == images
    assert list_images([atrium / "images"]) == images  # a plain folder of images
    assert list_images([atrium], Path("train.list")) == images[:2]
    assert list_images([atrium], atrium / "test.list") == images[2:]
    assert list_images([images[2], images[0]]) == [images[0], images[2]]
    (tmp_path / "bad.list").write_text("case_0000\ncase_0042\n")
    with pytest.raises(MedsslInputError, match="1 listed case.*case_0042"):
        list_images([atrium], tmp_path / "bad.list")
    with pytest.raises(MedsslInputError, match="no such file"):
        list_images([tmp_path / "missing.nii.gz"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsslInputError, match="no images found"):
        list_images([tmp_path / "empty"])
    with pytest.raises(MedsslInputError, match="case list not found"):
        list_images([atrium], Path("nope.list"))
    context = backend_context("structures", images[1])
    assert context == {"structures": atrium / "structures" / "case_0001.nii.gz",
                       "structure_names": atrium / "structures.json"}
    assert backend_context("files", images[1]) is None
    assert backend_context("structures", tmp_path / "x" / "case.nii.gz") is None


def test_shard_settings() -> None:
    assert distributed_shard({"RANK": "1", "WORLD_SIZE": "4"}) == (1, 4)
    assert distributed_shard({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert distributed_shard({}) is None
    from medssl.config import load_config

    with pytest.raises(MedsslInputError, match="shard index 2 must be below the shard count 2"):
        load_config(LocalizeRunConfig, base={"data": ["x"], "prompt": "p", "cache": "c", "shard_index": 2,
                                             "shard_count": 2})
    with pytest.raises(MedsslInputError, match="prompt is empty"):
        load_config(LocalizeRunConfig, base={"data": ["x"], "prompt": "  ", "cache": "c"})
