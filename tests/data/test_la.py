from pathlib import Path

import h5py
import nrrd
import numpy as np
import pytest

from medssl.data.la import LeftAtriumDataset, crop_bounds, la_default_splits, prepare_la, read_split
from medssl.data.spec import VolumeDataset, open_volume_dataset
from medssl.errors import MedsslInputError
from shared_paths import SHARED

LA = SHARED / "data" / "la"
TRAIN_LIST = SHARED / "data" / "la_splits" / "train.list"
CASE = "06SR5RBREL16DQ6M8LWS"  # first entry of train.list


def real_case(case=CASE):
    with h5py.File(LA / case / "mri_norm2.h5", "r") as f:
        return f["image"][()], f["label"][()]


def write_raw(root, case, image, label, label_values=255):
    d = root / case
    d.mkdir(parents=True)
    header = {"space": "left-posterior-superior", "space directions": np.diag([0.625] * 3),
              "space origin": np.zeros(3)}
    nrrd.write(str(d / "lgemri.nrrd"), image.astype(np.float32), header)
    if label is not None:
        nrrd.write(str(d / "laendo.nrrd"), (label.astype(np.uint8) * label_values).astype(np.uint8), header)


def bbox(mask, axis):
    idx = np.nonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
    return int(idx[0]), int(idx[-1])


@pytest.fixture(scope="module")
def raw_case():
    """A raw-like case built from a real volume: 12 slices, intensities made positive, padded in x, y."""
    image, label = real_case()
    image, label = image[:, :, 40:52], label[:, :, 40:52]
    raw = (image - image.min()) * 60.0 + 5.0
    pad = ((25, 35), (30, 30), (0, 0))
    return np.pad(raw, pad), np.pad(label, pad)


# ----------------------------------------------------------------------------- split lists
def test_read_split_ids_and_paths(tmp_path):
    p = tmp_path / "train.list"
    p.write_text("A1\n  ../data/2018LA_Seg_Training Set/B2/mri_norm2.h5 \n\n# note\nC3/\nD4\\mri_norm2.h5\n")
    assert read_split(p) == ["A1", "B2", "C3", "D4"]
    assert len(read_split(TRAIN_LIST)) == 80
    (tmp_path / "dup.list").write_text("A\nB\nA\n")
    with pytest.raises(MedsslInputError, match="twice: A"):
        read_split(tmp_path / "dup.list")
    with pytest.raises(MedsslInputError, match="not found"):
        read_split(tmp_path / "nope.list")


def test_default_splits_protocol():
    ids = TRAIN_LIST.read_text().split()
    s = la_default_splits(TRAIN_LIST, n_labeled=8)
    assert s.labeled == ids[:8]
    assert s.unlabeled == ids[8:64]
    assert s.val == ids[64:80]
    test_ids = set((SHARED / "data" / "la_splits" / "test.list").read_text().split())
    assert not test_ids & set(s.labeled + s.unlabeled + s.val)
    assert la_default_splits(ids, 4, n_val=0).val == []
    assert len(la_default_splits(ids, 4, n_val=0).unlabeled) == 76
    with pytest.raises(MedsslInputError, match="n_labeled"):
        la_default_splits(ids, 65)


# ----------------------------------------------------------------------------- dataset
def test_dataset_reads_real_cases(tmp_path):
    ids = TRAIN_LIST.read_text().split()[:2]
    split = tmp_path / "two.list"
    split.write_text("\n".join(f"/somewhere/{c}/mri_norm2.h5" for c in ids) + "\n")
    ds = LeftAtriumDataset(LA, split_file=split)
    assert isinstance(ds, VolumeDataset)
    assert ds.case_ids == ids and len(ds) == 2
    case = ds.load(1)
    image, label = real_case(ids[1])
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    np.testing.assert_array_equal(case.image, image)
    np.testing.assert_array_equal(case.label, label)
    assert case.spacing == (0.625, 0.625, 0.625)
    np.testing.assert_array_equal(case.affine, np.diag([0.625, 0.625, 0.625, 1.0]))
    assert case.case_id == ids[1] and case.source.endswith(f"{ids[1]}/mri_norm2.h5")
    # cached: the same read-only arrays come back
    assert ds.load(1) is case and not case.image.flags.writeable
    fresh = LeftAtriumDataset(LA, case_ids=ids, cache=False)
    assert fresh.load(0) is not fresh.load(0)


def test_missing_cases_error_and_allow_missing(tmp_path):
    ids = TRAIN_LIST.read_text().split()[:2]
    fake = [f"MISSING{i}" for i in range(7)]
    split = tmp_path / "bad.list"
    split.write_text("\n".join(ids[:1] + fake + ids[1:]) + "\n")
    with pytest.raises(MedsslInputError) as err:
        LeftAtriumDataset(LA, split_file=split)
    msg = str(err.value)
    assert msg.startswith(str(split)) and "7 of 9" in msg
    assert "MISSING0, MISSING1, MISSING2, MISSING3, MISSING4 (+2 more)" in msg
    with pytest.warns(UserWarning, match="7 of 9"):
        ds = LeftAtriumDataset(LA, split_file=split, allow_missing=True)
    assert ds.case_ids == ids


def test_open_volume_dataset_la(tmp_path):
    ds = open_volume_dataset(f"la:{LA}", split="train")
    assert len(ds) == 80 and ds.case_ids[0] == CASE
    assert open_volume_dataset(str(LA), split="train").case_ids == ds.case_ids  # layout detected
    with pytest.raises(MedsslInputError, match="split list for split 'val' not found"):
        open_volume_dataset(f"la:{LA}", split="val")
    with pytest.raises(MedsslInputError, match="unknown data layout 'nii'.*la .*folder"):
        open_volume_dataset(f"nii:{LA}")


# ----------------------------------------------------------------------------- prepare_la
def test_crop_bounds_hand_computed():
    # box [50, 199] + margins (10, 20) -> [40, 220): 180 >= 112, no widening
    assert crop_bounds(50, 199, 300, (10, 20), 112) == (40, 220)
    # box [100, 139] + (10, 10) = 60 -> widen by 52: 26 each side -> [64, 176)
    assert crop_bounds(100, 139, 300, (10, 10), 112) == (64, 176)
    # odd deficit: box [100, 140] + (10, 10) = 61 -> 51 = 25 before + 26 after -> [65, 177)
    assert crop_bounds(100, 140, 300, (10, 10), 112) == (65, 177)
    # near the end of the axis: [270, 289] + (10, 10) = 40 -> [224, 336) shifted back to [188, 300)
    assert crop_bounds(270, 289, 300, (10, 10), 112) == (188, 300)
    # volume shorter than min_size: the whole axis
    assert crop_bounds(10, 20, 90, (10, 10), 112) == (0, 90)
    # margins beyond the volume are clipped
    assert crop_bounds(5, 250, 260, (10, 20), 112) == (0, 260)


def test_prepare_crop_margins_zscore_labels(tmp_path, raw_case):
    image, label = raw_case
    write_raw(tmp_path / "raw", "A", image, label)
    [out] = prepare_la(tmp_path / "raw", tmp_path / "out", seed=3)
    assert out == tmp_path / "out" / "A" / "mri_norm2.h5"
    with h5py.File(out, "r") as f:
        img, lab = f["image"][()], f["label"][()]
        x0, y0, z0 = f.attrs["crop_start"]
        x1, y1, z1 = f.attrs["crop_stop"]
    assert img.dtype == np.float32 and lab.dtype == np.uint8
    assert (z0, z1) == (0, image.shape[2]) and img.shape == (x1 - x0, y1 - y0, image.shape[2])
    # x: the label box (152 voxels) plus a margin of 10..20 on each side, no widening needed
    lo, hi = bbox(label, 0)
    assert 10 <= lo - x0 <= 20 and 10 <= (x1 - 1) - hi <= 20
    # y: margins of at least 10 and a side of at least 112 voxels
    lo, hi = bbox(label, 1)
    assert lo - y0 >= 10 and (y1 - 1) - hi >= 10 and y1 - y0 >= 112
    if y1 - y0 > 112:
        assert lo - y0 <= 20 and (y1 - 1) - hi <= 20
    # z-scored over the cropped volume, computed independently here
    crop = image[x0:x1, y0:y1].astype(np.float64)
    np.testing.assert_allclose(img, (crop - crop.mean()) / crop.std(), atol=1e-5)
    assert abs(float(img.mean())) < 1e-4 and abs(float(img.std()) - 1) < 1e-4
    assert set(np.unique(lab).tolist()) == {0, 1}
    np.testing.assert_array_equal(lab, label[x0:x1, y0:y1])
    ds = LeftAtriumDataset(tmp_path / "out")
    assert ds.case_ids == ["A"] and ds.load(0).spacing == pytest.approx((0.625,) * 3)


def test_prepare_seeded_reproducible(tmp_path, raw_case):
    image, label = raw_case
    write_raw(tmp_path / "raw", "A", image, label)
    write_raw(tmp_path / "raw", "B", image[::-1], label[::-1])
    write_raw(tmp_path / "rawA", "A", image, label)

    def crops(out):
        res = {}
        for p in sorted(Path(out).glob("*/mri_norm2.h5")):
            with h5py.File(p, "r") as f:
                res[p.parent.name] = (f["image"][()], tuple(f.attrs["crop_start"]), tuple(f.attrs["crop_stop"]))
        return res

    prepare_la(tmp_path / "raw", tmp_path / "o1", seed=5)
    prepare_la(tmp_path / "raw", tmp_path / "o2", seed=5)
    prepare_la(tmp_path / "rawA", tmp_path / "o3", seed=5)  # a case's crop does not depend on the others
    prepare_la(tmp_path / "raw", tmp_path / "o4", seed=6)
    c1, c2, c3, c4 = (crops(tmp_path / o) for o in ("o1", "o2", "o3", "o4"))
    for case in ("A", "B"):
        np.testing.assert_array_equal(c1[case][0], c2[case][0])
        assert c1[case][1:] == c2[case][1:]
    np.testing.assert_array_equal(c1["A"][0], c3["A"][0])
    assert [c1[c][1:] for c in "AB"] != [c4[c][1:] for c in "AB"]


def test_prepare_min_size_border_and_small_volume(tmp_path, raw_case):
    image, _ = raw_case
    vol = image[:150, :100, :4]
    label = np.zeros(vol.shape, np.uint8)
    label[2:12, 40:50, 1:3] = 1
    write_raw(tmp_path / "raw", "S", vol, label)
    [out] = prepare_la(tmp_path / "raw", tmp_path / "out", seed=0)
    with h5py.File(out, "r") as f:
        (x0, y0, _), (x1, y1, _) = f.attrs["crop_start"], f.attrs["crop_stop"]
        lab = f["label"][()]
    # x: 10 + margins < 112 -> widened to 112 and shifted inside the volume at the border
    assert (x0, x1) == (0, 112)
    # y: the volume (100) is smaller than 112 -> the whole axis
    assert (y0, y1) == (0, 100)
    assert lab.sum() == label.sum()
    # normalize_over="volume": z-scored with the statistics of the whole uncropped scan
    [out2] = prepare_la(tmp_path / "raw", tmp_path / "out2", seed=0, normalize_over="volume")
    with h5py.File(out2, "r") as f:
        img = f["image"][()]
    full = vol.astype(np.float64)
    np.testing.assert_allclose(img, (full[0:112, 0:100] - full.mean()) / full.std(), atol=1e-5)


def test_prepare_rejects_bad_cases_and_writes_nothing(tmp_path, raw_case):
    image, label = raw_case
    write_raw(tmp_path / "raw", "A", image, label)
    write_raw(tmp_path / "raw", "B", image, label[:, :-1])  # shape mismatch
    write_raw(tmp_path / "raw", "C", image, None)  # no label
    write_raw(tmp_path / "raw", "D", image, label, label_values=7)  # unexpected label values
    with pytest.raises(MedsslInputError) as err:
        prepare_la(tmp_path / "raw", tmp_path / "out")
    msg = str(err.value)
    assert "3 bad case(s), nothing written" in msg
    assert "B/laendo.nrrd" in msg and "C/laendo.nrrd: missing" in msg and "D/laendo.nrrd" in msg
    assert not list((tmp_path).glob("out/**/*.h5")) and not list(tmp_path.glob("out/**/.*"))
    # an existing output is kept unless overwrite is given
    good = tmp_path / "good"
    write_raw(good, "A", image, label)
    prepare_la(good, tmp_path / "out2", seed=1)
    with pytest.raises(MedsslInputError, match="already exists"):
        prepare_la(good, tmp_path / "out2", seed=2)
    prepare_la(good, tmp_path / "out2", seed=2, overwrite=True)
    with pytest.raises(MedsslInputError, match="raw left-atrium folder not found"):
        prepare_la(tmp_path / "nothing", tmp_path / "o")


def test_label_free_crop_never_uses_the_label(tmp_path, raw_case):
    image, label = raw_case
    moved = np.zeros_like(label)
    moved[5:20, 5:20, :3] = 1  # a label somewhere else entirely
    write_raw(tmp_path / "raw", "A", image, label)
    write_raw(tmp_path / "raw", "B", image, moved)
    write_raw(tmp_path / "raw", "C", image, None)  # unlabeled case: no laendo.nrrd at all
    outs = prepare_la(tmp_path / "raw", tmp_path / "out", seed=4, label_free_crop=True)
    boxes, arrays = [], []
    for p in outs:
        with h5py.File(p, "r") as f:
            boxes.append((tuple(f.attrs["crop_start"]), tuple(f.attrs["crop_stop"])))
            arrays.append(f["image"][()])
            has_label = "label" in f
        assert has_label == (p.parent.name != "C")
    assert LeftAtriumDataset(tmp_path / "out").load(2).label is None
    # the atrium lies inside the label-free crop of every case (all share the image)
    lo0, hi0 = bbox(label, 0)
    lo1, hi1 = bbox(label, 1)
    for start, stop in boxes:
        assert start[0] <= lo0 and stop[0] > hi0 and start[1] <= lo1 and stop[1] > hi1
    # margins are drawn per case id; under the same id, the same image without any label file
    # gives exactly case A's crop, so the label never influenced it
    write_raw(tmp_path / "raw2", "A", image, None)
    [p2] = prepare_la(tmp_path / "raw2", tmp_path / "out2", seed=4, label_free_crop=True)
    with h5py.File(p2, "r") as f:
        np.testing.assert_array_equal(f["image"][()], arrays[0])
        assert (tuple(f.attrs["crop_start"]), tuple(f.attrs["crop_stop"])) == boxes[0]


def test_label_free_crop_box_of_a_bright_body(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.uniform(0, 5, size=(120, 100, 3))  # dark background
    vol[30:90, 40:70] += 200 + rng.uniform(0, 20, size=(60, 30, 3))  # the body
    label = np.zeros(vol.shape, np.uint8)
    label[100:110, 5:10] = 1
    write_raw(tmp_path / "raw", "A", vol, label)
    [p] = prepare_la(tmp_path / "raw", tmp_path / "out", label_free_crop=True, min_size=16)
    with h5py.File(p, "r") as f:
        (x0, y0, _), (x1, y1, _) = f.attrs["crop_start"], f.attrs["crop_stop"]
    assert 10 <= 30 - x0 <= 20 and 10 <= x1 - 90 <= 20
    assert 10 <= 40 - y0 <= 20 and 10 <= y1 - 70 <= 20
