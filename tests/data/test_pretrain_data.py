"""Pretraining data: image lists, ROI maps found by content hash, joint transforms, batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medssl.data.io import read_image, write_nifti, write_png
from medssl.data.pretrain import (
    PretrainBatches,
    PretrainDataConfig,
    PretrainDataset,
    list_pretrain_images,
    open_pretrain_dataset,
)
from medssl.errors import MedsslInputError
from medssl.localize import RoiCache, create_localizer

LOW, HIGH = 20, 200


def _layout_2d(root: Path, n: int = 4, size: int = 64) -> tuple[Path, list[np.ndarray]]:
    """An images/ layout of ``n`` PNGs whose bright pixels are exactly their (asymmetric) ROI maps,
    ROI maps as files in ``root/rois``, and train.list naming the images in reverse order."""
    rng = np.random.default_rng(0)
    rois = []
    for i in range(n):
        roi = np.zeros((size, size), dtype=bool)
        roi[4 + 2 * i:20 + 2 * i, 6:14] = True  # a tall bar near the left edge ...
        roi[4 + 2 * i:10 + 2 * i, 14:30] = True  # ... with an arm to the right (no mirror symmetry)
        image = np.where(roi, HIGH, LOW).astype(np.uint8)
        image[-1, -1 - i] = rng.integers(0, 10)  # distinct contents, far from the ROI
        write_png(root / "images" / f"case_{i}.png", image)
        write_png(root / "rois" / f"case_{i}.png", roi.astype(np.uint8))
        rois.append(roi)
    (root / "train.list").write_text("".join(f"case_{i}\n" for i in reversed(range(n))))
    return root, rois


def _fill_cache(images: list[Path], roi_dir: Path, cache_dir: Path, prompt: str = "the region") -> None:
    cache = RoiCache(cache_dir)
    localizer = create_localizer("files", root=roi_dir)
    for path in images:
        cache.get_or_compute(read_image(path), prompt, localizer)


def test_image_lists_follow_the_split(tmp_path: Path) -> None:
    root, _ = _layout_2d(tmp_path / "d")
    images = root / "images"
    assert list_pretrain_images(root) == [images / f"case_{i}.png" for i in (3, 2, 1, 0)]  # train.list order
    assert list_pretrain_images(root, "all") == [images / f"case_{i}.png" for i in range(4)]
    (root / "small.list").write_text("case_1\n")
    assert list_pretrain_images(root, "small") == [images / "case_1.png"]
    assert list_pretrain_images(images) == [images / f"case_{i}.png" for i in range(4)]  # a plain folder
    (root / "bad.list").write_text("case_1\ncase_9\n")
    with pytest.raises(MedsslInputError, match="case_9"):
        list_pretrain_images(root, "bad")
    with pytest.raises(MedsslInputError, match="not found"):
        list_pretrain_images(root, "nope")


def test_2d_resize_and_flip_keep_image_and_roi_aligned(tmp_path: Path) -> None:
    root, rois = _layout_2d(tmp_path / "d")
    _fill_cache(list_pretrain_images(root, "all"), root / "rois", tmp_path / "cache")
    cfg = PretrainDataConfig(folder=root, split="all", image_size=32, roi_cache=tmp_path / "cache")
    dataset, report = open_pretrain_dataset(cfg, dims=2, seed=5)
    assert report["with_roi_entry"] == 4 and report["missing_roi"] == 0 and report["empty_roi"] == 0
    mid = (LOW + HIGH) / 2
    for index, roi in enumerate(rois):
        # the ROI edges lie on even pixels, so a 2x downsampling keeps it exact: pixel (r, c) <- (2r+1, 2c+1)
        small = roi[1::2, 1::2]
        seen = set()
        for epoch in range(12):
            image, roi_t = dataset.item(index, epoch)
            assert image.shape == (1, 32, 32) and image.dtype == np.float32 and roi_t.shape == (32, 32)
            bright = image[0] * dataset.std + dataset.mean > mid
            assert np.array_equal(bright, roi_t)  # image and ROI moved together
            flipped = np.array_equal(roi_t, small[:, ::-1])
            assert flipped or np.array_equal(roi_t, small)  # a horizontal flip or nothing
            seen.add(flipped)
            again, roi_again = dataset.item(index, epoch)  # a pure function of (seed, epoch, index)
            assert np.array_equal(again, image) and np.array_equal(roi_again, roi_t)
        assert seen == {True, False}


def test_3d_crop_pad_and_flips_keep_volume_and_roi_aligned(tmp_path: Path) -> None:
    shape = (20, 24, 6)
    roi = np.zeros(shape, dtype=bool)
    roi[2:9, 3:7, 1:4] = True
    roi[2:4, 7:15, 1:2] = True  # asymmetric along every axis
    volume = np.where(roi, 3.0, -1.0).astype(np.float32)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    write_nifti(tmp_path / "vols" / "v.nii.gz", volume, affine)
    write_nifti(tmp_path / "rois" / "v.nii.gz", roi.astype(np.uint8), affine)
    _fill_cache([tmp_path / "vols" / "v.nii.gz"], tmp_path / "rois", tmp_path / "cache")
    cfg = PretrainDataConfig(folder=tmp_path / "vols", crop_size=(16, 16, 8), roi_cache=tmp_path / "cache",
                             mean=1.0, std=2.0)
    dataset, _ = open_pretrain_dataset(cfg, dims=3, seed=1)
    assert (dataset.mean, dataset.std) == (1.0, 2.0)
    padded = np.pad(np.where(roi, 1.0, -1.0), [(0, 0), (0, 0), (1, 1)])  # depth 6 -> 8, zeros
    flips_seen = set()
    for epoch in range(16):
        image, crop = dataset.item(0, epoch)
        assert image.shape == (1, 16, 16, 8) and crop.shape == (16, 16, 8)
        assert np.array_equal(image[0] > 0, crop)  # ROI -> (3-1)/2 = 1 > 0, background -> -1, padding -> 0
        # the item is one window of the padded, normalised volume, flipped along some axes
        matches = [(h, w, axes) for h in range(5) for w in range(9)
                   for axes in [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
                   if np.array_equal(np.flip(padded[h:h + 16, w:w + 16], axes) if axes else padded[h:h + 16, w:w + 16],
                                     image[0])]
        assert len(matches) == 1, matches
        flips_seen.add(matches[0][2])
    assert len(flips_seen) >= 4  # the flips vary with the epoch


def test_normalisation_uses_the_training_images(tmp_path: Path) -> None:
    root, _ = _layout_2d(tmp_path / "d")
    train = [read_image(p).array.astype(np.float64) for p in list_pretrain_images(root)]
    dataset, report = open_pretrain_dataset(PretrainDataConfig(folder=root, image_size=64), dims=2)
    values = np.concatenate([a.ravel() for a in train])
    assert dataset.mean == pytest.approx(values.mean(), rel=1e-12)
    assert dataset.std == pytest.approx(values.std(), rel=1e-9)
    assert report["stats_computed"] and report["roi_entries"] == 0
    image, roi = dataset.base(0)  # no ROI cache: empty ROI maps
    assert not roi.any()
    raw = read_image(root / "images" / "case_3.png").array.astype(np.float64)  # first in train.list
    assert np.allclose(image[0], (raw - values.mean()) / values.std(), atol=1e-5)


def test_colour_images_become_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 50, 200
    write_png(tmp_path / "imgs" / "a.png", rgb)
    write_png(tmp_path / "imgs" / "b.png", np.full((32, 32), 10, np.uint8))
    dataset = PretrainDataset(list_pretrain_images(tmp_path / "imgs"), dims=2, image_size=32, mean=0.0, std=1.0,
                              flip=False)
    assert np.allclose(dataset.base(0)[0], 0.299 * 100 + 0.587 * 50 + 0.114 * 200, atol=1e-3)
    three = PretrainDataset(list_pretrain_images(tmp_path / "imgs"), dims=2, in_chans=3, image_size=32, mean=0.0,
                            std=1.0, flip=False)
    assert np.allclose(three.base(0)[0][:, 0, 0], [100, 50, 200]) and np.allclose(three.base(1)[0], 10)


def test_missing_and_ambiguous_roi_entries(tmp_path: Path) -> None:
    root, rois = _layout_2d(tmp_path / "d")
    images = list_pretrain_images(root, "all")
    _fill_cache(images[:3], root / "rois", tmp_path / "cache")  # case_3 has no entry
    cfg = PretrainDataConfig(folder=root, split="all", image_size=64, roi_cache=tmp_path / "cache")
    with pytest.raises(MedsslInputError) as err:
        open_pretrain_dataset(cfg, dims=2)
    assert "case_3.png" in str(err.value) and "no ROI map" in str(err.value)
    dataset, report = open_pretrain_dataset(cfg.model_copy(update={"allow_missing_roi": True}), dims=2)
    assert report["missing_roi"] == 1 and report["missing_roi_files"] == ["case_3.png"]
    assert not dataset.base_roi(3).any() and np.array_equal(dataset.base_roi(0), rois[0])

    other = tmp_path / "other_rois"  # a second prompt with different maps for case_0
    write_png(other / "case_0.png", np.ones((64, 64), np.uint8))
    _fill_cache(images[:1], other, tmp_path / "cache", prompt="everything")
    with pytest.raises(MedsslInputError, match="'everything'.*'the region'|'the region'.*'everything'"):
        open_pretrain_dataset(cfg.model_copy(update={"allow_missing_roi": True}), dims=2)
    chosen, _ = open_pretrain_dataset(cfg.model_copy(update={"allow_missing_roi": True, "roi_prompt": "everything"}),
                                      dims=2)
    assert chosen.base_roi(0).all() and not chosen.base_roi(1).any()  # case_1 has no 'everything' entry


def test_2d_data_with_dims_3_is_a_clear_error(tmp_path: Path) -> None:
    root, _ = _layout_2d(tmp_path / "d")
    with pytest.raises(MedsslInputError, match="expected a 3D image.*--dims 2"):
        open_pretrain_dataset(PretrainDataConfig(folder=root), dims=3)


def test_batches_cover_each_epoch_once_and_split_ranks(tmp_path: Path) -> None:
    root, _ = _layout_2d(tmp_path / "d", n=7)
    dataset = PretrainDataset(list_pretrain_images(root, "all"), dims=2, image_size=32, mean=0.0, std=1.0)
    one = PretrainBatches(dataset, batch_size=2, seed=3)
    assert one.iterations_per_epoch == 3  # 7 // 2, the remainder is dropped
    for epoch in range(2):
        seen = [i for it in range(3 * epoch, 3 * epoch + 3) for i in one.indices(it)[0]]
        assert len(set(seen)) == 6 and seen == [int(i) for i in one.epoch_order(epoch)[:6]]
    assert not np.array_equal(one.epoch_order(0), one.epoch_order(1))
    batch = one(4)
    assert batch.epoch == 1 and tuple(batch.image.shape) == (2, 1, 32, 32) and tuple(batch.roi.shape) == (2, 32, 32)
    assert np.array_equal(batch.image.numpy(), np.stack([dataset.item(i, 1)[0] for i in one.indices(4)[0]]))
    ranks = [PretrainBatches(dataset, batch_size=1, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0].iterations_per_epoch == 3
    for it in range(3):
        a, b = ranks[0].indices(it)[0], ranks[1].indices(it)[0]
        assert a + b == one.indices(it)[0]  # rank r takes the r-th block of the global batch
    with pytest.raises(MedsslInputError, match="needs at least"):
        PretrainBatches(dataset, batch_size=8, seed=0)
