"""RoiCache: hits, misses, invalidation per key part, concurrent fill, manifest numbers."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medssl.data.io import ImageData, affine_from_spacing
from medssl.localize import LocalizationResult, RoiCache, boxes_to_mask, make_provenance


class BrightBoxLocalizer:
    """Test backend: one box around the voxels brighter than ``level``; counts its calls."""

    name = "bright-box"
    model_id = "test/none"

    def __init__(self, level: float = 0.5, revision: str = "r1") -> None:
        self.level = level
        self.model_revision = revision
        self.calls = 0

    def params(self) -> dict[str, Any]:
        return {"level": self.level}

    def localize(self, image: ImageData, prompt: str, context: dict | None = None) -> LocalizationResult:
        self.calls += 1
        idx = np.argwhere(image.array > self.level)
        boxes = [] if idx.size == 0 else [tuple((int(a), int(b) + 1)
                                                for a, b in zip(idx.min(0), idx.max(0), strict=True))]
        return LocalizationResult(roi=boxes_to_mask(boxes, image.spatial_shape), boxes=boxes,
                                  provenance=make_provenance(self, prompt))


def _image3d(offset: int = 0) -> ImageData:
    arr = np.zeros((6, 5, 4), np.float32)
    arr[1 + offset:3 + offset, 1:4, 2] = 1.0
    return ImageData(array=arr, affine=affine_from_spacing((2.0, 2.0, 3.0)), spacing=(2.0, 2.0, 3.0))


def _image2d(bright: bool = True) -> ImageData:
    arr = np.zeros((8, 10), np.float32)
    if bright:
        arr[2:4, 5:9] = 1.0
    return ImageData(array=arr, affine=np.eye(4), spacing=(1.0, 1.0), meta={"has_geometry": False})


def test_hit_after_put_and_reuse_on_rerun(tmp_path: Path) -> None:
    loc = BrightBoxLocalizer()
    cache = RoiCache(tmp_path / "c")
    first = cache.get_or_compute(_image3d(), "p", loc)
    assert (loc.calls, cache.misses, cache.hits) == (1, 1, 0)
    rerun = RoiCache(tmp_path / "c")  # a new process would see the same files
    again = rerun.get_or_compute(_image3d(), "p", loc)
    assert (loc.calls, rerun.hits) == (1, 1)
    np.testing.assert_array_equal(again.roi, first.roi)
    assert again.boxes == first.boxes == [((1, 3), (1, 4), (2, 3))]
    assert again.provenance == json.loads(json.dumps(first.provenance))
    key = cache.key(_image3d(), "p", loc)
    import nibabel as nib

    stored = nib.load(str(tmp_path / "c" / "entries" / f"{key}.roi.nii.gz"))
    np.testing.assert_allclose(stored.affine, _image3d().affine)
    sidecar = json.loads((tmp_path / "c" / "entries" / f"{key}.json").read_text())
    assert sidecar["key_parts"]["prompt"] == "p" and sidecar["key_parts"]["params"] == {"level": 0.5}
    assert sidecar["roi_voxels"] == 6


def test_2d_entries_are_png(tmp_path: Path) -> None:
    cache = RoiCache(tmp_path)
    result = cache.get_or_compute(_image2d(), "p", BrightBoxLocalizer())
    key = cache.key(_image2d(), "p", BrightBoxLocalizer())
    assert (tmp_path / "entries" / f"{key}.roi.png").is_file()
    hit = cache.get(_image2d(), "p", BrightBoxLocalizer())
    assert hit is not None and hit.roi.sum() == 8
    np.testing.assert_array_equal(hit.roi, result.roi)


@pytest.mark.parametrize("change", ["prompt", "param", "revision", "image"])
def test_each_key_part_invalidates(tmp_path: Path, change: str) -> None:
    cache = RoiCache(tmp_path)
    cache.get_or_compute(_image3d(), "p", BrightBoxLocalizer())
    image, prompt, loc = _image3d(), "p", BrightBoxLocalizer()
    if change == "prompt":
        prompt = "q"
    elif change == "param":
        loc = BrightBoxLocalizer(level=0.6)
    elif change == "revision":
        loc = BrightBoxLocalizer(revision="r2")
    else:
        image = _image3d(offset=1)
    assert cache.get(image, prompt, loc) is None
    assert cache.get(_image3d(), "p", BrightBoxLocalizer()) is not None


def test_sidecar_without_roi_or_with_another_roi_is_a_miss(tmp_path: Path) -> None:
    cache = RoiCache(tmp_path)
    loc = BrightBoxLocalizer()
    cache.get_or_compute(_image3d(), "p", loc)
    key = cache.key(_image3d(), "p", loc)
    roi_file = tmp_path / "entries" / f"{key}.roi.nii.gz"
    from medssl.data.io import write_nifti

    write_nifti(roi_file, np.zeros((6, 5, 4), np.uint8), _image3d().affine)  # checksum no longer matches
    assert cache.get(_image3d(), "p", loc) is None
    roi_file.unlink()
    assert cache.get(_image3d(), "p", loc) is None
    assert cache.manifest()["entries"] == 0


def _fill(root: str, offsets: list[int]) -> None:
    cache = RoiCache(root)
    for off in offsets:
        cache.get_or_compute(_image3d(off), "p", BrightBoxLocalizer())


def test_two_processes_filling_one_cache(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_fill, args=(str(tmp_path), [0, 1, 2, 3])),
             ctx.Process(target=_fill, args=(str(tmp_path), [3, 2, 1, 0]))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(p.name for p in (tmp_path / "entries").iterdir()) == sorted(
        [f"{RoiCache(tmp_path).key(_image3d(o), 'p', BrightBoxLocalizer())}{ext}"
         for o in range(4) for ext in (".json", ".roi.nii.gz")])  # no temporary leftovers
    cache = RoiCache(tmp_path)
    loc = BrightBoxLocalizer()
    for off in range(4):
        hit = cache.get(_image3d(off), "p", loc)
        assert hit is not None and hit.boxes == [((1 + off, 3 + off), (1, 4), (2, 3))]
    assert loc.calls == 0


def test_manifest_numbers_are_exact(tmp_path: Path) -> None:
    cache = RoiCache(tmp_path)
    loc = BrightBoxLocalizer()
    cache.get_or_compute(_image2d(True), "a", loc)  # 8 / 80 voxels
    cache.get_or_compute(_image2d(True), "b", loc)  # same image, another prompt: 8 / 80
    cache.get_or_compute(_image2d(False), "a", loc)  # empty ROI
    cache.get_or_compute(_image3d(), "a", loc)  # 6 / 120
    info = cache.manifest()
    assert info["entries"] == 4
    assert info["images"] == 3
    assert info["images_with_roi"] == 2
    assert info["empty_entries"] == 1
    assert info["mean_roi_fraction"] == pytest.approx((0.1 + 0.1 + 0.0 + 0.05) / 4)
    assert info["prompts"] == {"a": 3, "b": 1} and info["backends"] == {"bright-box": 4}
    assert json.loads((tmp_path / "manifest.json").read_text()) == info
    assert RoiCache(tmp_path / "empty").manifest()["entries"] == 0


# -- context, intermediates, lookup (format 2) -------------------------------------------------------


class SaliencyLocalizer(BrightBoxLocalizer):
    """Test backend with intermediates: saliency = image / max, coarse = saliency > level, refined = coarse."""

    name = "saliency-box"

    def localize(self, image: ImageData, prompt: str, context: dict | None = None) -> LocalizationResult:
        result = super().localize(image, prompt, context)
        sal = image.array / max(float(image.array.max()), 1e-6) * 0.7 + 0.1
        result.saliency = sal
        result.coarse_mask = sal > self.level
        result.refined_mask = np.zeros(image.spatial_shape, bool)
        return result


def test_context_is_part_of_the_key_by_content(tmp_path: Path) -> None:
    from medssl.localize.cache import context_digest

    cache, loc, image = RoiCache(tmp_path / "c"), BrightBoxLocalizer(), _image3d()
    smap = tmp_path / "a" / "map.txt"
    smap.parent.mkdir()
    smap.write_text("structure map v1")
    cache.get_or_compute(image, "p", loc, {"structures": smap, "names": {1: "heart"}})
    assert cache.get(image, "p", loc, {"structures": smap, "names": {1: "heart"}}) is not None
    moved = tmp_path / "b" / "elsewhere.txt"  # same content elsewhere: same key
    moved.parent.mkdir()
    moved.write_text("structure map v1")
    assert cache.get(image, "p", loc, {"structures": str(moved), "names": {1: "heart"}}) is not None
    assert cache.get(image, "p", loc, {"structures": smap, "names": {1: "lung"}}) is None
    assert cache.get(image, "p", loc, None) is None
    smap.write_text("structure map v2")
    assert cache.get(image, "p", loc, {"structures": smap, "names": {1: "heart"}}) is None
    assert context_digest(None) is None and context_digest({}) is None
    assert context_digest({"m": np.zeros(3)}) != context_digest({"m": np.ones(3)})
    assert context_digest({"m": np.zeros(3)}) == context_digest({"m": np.zeros(3)})
    assert context_digest({"x": "not a file"}) == {"x": "not a file"}
    parts = cache.key_parts(image, "p", loc, {"structures": smap})
    import hashlib

    assert parts["context"] == {"structures": {"file_sha256": hashlib.sha256(b"structure map v2").hexdigest()}}
    assert parts["format_version"] == "2"


def test_intermediates_are_stored_checksummed_and_returned(tmp_path: Path) -> None:
    import hashlib

    cache, loc, image = RoiCache(tmp_path), SaliencyLocalizer(), _image3d()
    computed = cache.get_or_compute(image, "p", loc)
    key = cache.key(image, "p", loc)
    npz = tmp_path / "entries" / f"{key}.intermediates.npz"
    sidecar = json.loads((tmp_path / "entries" / f"{key}.json").read_text())
    assert sidecar["intermediates"]["file"] == npz.name
    assert sidecar["intermediates"]["sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    assert sidecar["intermediates"]["arrays"]["saliency"] == {"dtype": "float16", "shape": [6, 5, 4]}
    plain = cache.get(image, "p", loc)
    assert plain is not None and plain.saliency is None and plain.coarse_mask is None
    full = cache.get(image, "p", loc, with_intermediates=True)
    assert full is not None and full.saliency.dtype == np.float32
    np.testing.assert_array_equal(full.saliency, computed.saliency.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(full.coarse_mask, computed.coarse_mask)
    np.testing.assert_array_equal(full.refined_mask, np.zeros((6, 5, 4), bool))
    assert cache.manifest()["entries_with_intermediates"] == 1
    npz.write_bytes(npz.read_bytes()[:-5] + b"xxxxx")  # corrupted after the fact
    assert cache.get(image, "p", loc, with_intermediates=True) is None
    assert cache.get(image, "p", loc) is not None  # the ROI itself is intact
    npz.unlink()
    assert cache.get(image, "p", loc) is None and cache.valid_entries() == []


def test_old_format_entries_are_misses(tmp_path: Path) -> None:
    cache, loc = RoiCache(tmp_path), BrightBoxLocalizer()
    cache.get_or_compute(_image2d(), "p", loc)
    key = cache.key(_image2d(), "p", loc)
    path = tmp_path / "entries" / f"{key}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": "1"}))
    assert cache.get(_image2d(), "p", loc) is None


def test_lookup_by_image_alone(tmp_path: Path) -> None:
    from medssl.errors import MedsslInputError

    cache = RoiCache(tmp_path)
    assert cache.lookup(_image3d()) is None  # no cache folder yet
    cache.get_or_compute(_image3d(), "p", BrightBoxLocalizer())
    found = RoiCache(tmp_path).lookup(_image3d())
    assert found is not None and found.boxes == [((1, 3), (1, 4), (2, 3))]
    assert cache.lookup(_image3d(offset=1)) is None
    cache.get_or_compute(_image3d(), "q", SaliencyLocalizer())  # the index notices the new entry
    with pytest.raises(MedsslInputError) as info:
        cache.lookup(_image3d())
    message = str(info.value)
    assert "2 cached ROI maps" in message and "prompt 'p'" in message and "prompt 'q'" in message
    assert "'bright-box'" in message and "'saliency-box'" in message
    assert cache.lookup(_image3d(), prompt="q").provenance["backend"] == "saliency-box"
    assert cache.lookup(_image3d(), backend="bright-box").provenance["prompt"] == "p"
    assert cache.lookup(_image3d(), prompt="p", backend="saliency-box") is None
