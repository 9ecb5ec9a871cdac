import json

import numpy as np
import pytest

from medssl.data.io import write_nifti, write_png
from medssl.data.layouts import (
    CocoDataset,
    CsvClassificationDataset,
    FolderSegmentationDataset,
    ImageFolderDataset,
    strip_suffix,
)
from medssl.data.spec import VolumeDataset, open_volume_dataset
from medssl.errors import MedsslInputError

AFFINE = np.diag([0.8, 0.9, 2.0, 1.0])


def volume(seed, shape=(6, 5, 4)):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape).astype(np.float32)
    label = (image > 0.5).astype(np.uint8)
    return image, label


def make_folder(root, names=("a", "b"), label_names=None, shape=(6, 5, 4)):
    for k, n in enumerate(names):
        write_nifti(root / "images" / f"{n}.nii.gz", volume(k, shape)[0], AFFINE)
    for k, n in enumerate(names if label_names is None else label_names):
        write_nifti(root / "labels" / f"{n}.nii.gz", volume(k, shape)[1], AFFINE)
    return root


def test_strip_suffix():
    assert [strip_suffix(n) for n in ("a.nii.gz", "b.NII", "c.png", "d.e.nrrd", "f")] == ["a", "b", "c", "d.e", "f"]


def test_folder_3d_pairs_and_cache(tmp_path):
    root = make_folder(tmp_path / "ds")
    (root / "structures").mkdir()
    (root / "structures.json").write_text("{}")
    ds = FolderSegmentationDataset(root)
    assert isinstance(ds, VolumeDataset)
    assert ds.case_ids == ["a", "b"]
    case = ds.load(1)
    image, label = volume(1)
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    np.testing.assert_allclose(case.image, image)
    np.testing.assert_array_equal(case.label, label)
    np.testing.assert_allclose(case.affine, AFFINE)
    assert case.spacing == pytest.approx((0.8, 0.9, 2.0))
    assert case.case_id == "b" and case.source.endswith("b.nii.gz")
    assert ds.load(1) is case and not case.label.flags.writeable
    assert FolderSegmentationDataset(root, cache=False).load(0) is not None


def test_folder_split_lists(tmp_path):
    root = make_folder(tmp_path / "ds", names=("a", "b", "c"))
    (root / "train.list").write_text("c\nb.nii.gz\n\n")
    (root / "test.list").write_text("a\n")
    assert FolderSegmentationDataset(root, split="train").case_ids == ["c", "b"]
    assert FolderSegmentationDataset(root, split="test").case_ids == ["a"]
    with pytest.raises(MedsslInputError, match="val.list: split list for split 'val' not found"):
        FolderSegmentationDataset(root, split="val")
    (root / "test.list").write_text("a\nzz\n")
    with pytest.raises(MedsslInputError, match="1 listed case\\(s\\) not in .*: zz"):
        FolderSegmentationDataset(root, split="test")


def test_folder_unmatched_names(tmp_path):
    root = make_folder(tmp_path / "ds", names=("a", "b", "c"), label_names=("a", "c"))
    with pytest.raises(MedsslInputError, match="1 image\\(s\\) without a label .*: b"):
        FolderSegmentationDataset(root)
    ds = FolderSegmentationDataset(root, labels_required=False)
    assert [ds.load(i).label is None for i in range(3)] == [False, True, False]
    root2 = make_folder(tmp_path / "ds2", names=("a",), label_names=("a", "x"))
    with pytest.raises(MedsslInputError, match="label\\(s\\) without an image of the same name: x"):
        FolderSegmentationDataset(root2)


def test_folder_missing_and_empty(tmp_path):
    with pytest.raises(MedsslInputError, match="dataset folder not found"):
        FolderSegmentationDataset(tmp_path / "none")
    (tmp_path / "x").mkdir()
    with pytest.raises(MedsslInputError, match="missing images/ folder"):
        FolderSegmentationDataset(tmp_path / "x")
    (tmp_path / "x" / "images").mkdir()
    with pytest.raises(MedsslInputError, match="missing labels/ folder"):
        FolderSegmentationDataset(tmp_path / "x")
    (tmp_path / "x" / "labels").mkdir()
    with pytest.raises(MedsslInputError, match="empty dataset"):
        FolderSegmentationDataset(tmp_path / "x")


def test_folder_2d_png(tmp_path):
    img = (np.arange(7 * 9).reshape(7, 9) * 3).astype(np.uint8)
    lab = np.zeros((7, 9), np.uint8)
    lab[2:4, 5:8] = 1
    write_png(tmp_path / "images" / "p1.png", img)
    write_png(tmp_path / "labels" / "p1.png", lab)
    case = FolderSegmentationDataset(tmp_path).load(0)
    assert case.image.shape == (7, 9) and case.image.dtype == np.float32
    np.testing.assert_array_equal(case.image, img.astype(np.float32))
    np.testing.assert_array_equal(case.label, lab)


def test_open_volume_dataset_folder(tmp_path):
    root = make_folder(tmp_path / "ds")
    assert open_volume_dataset(f"folder:{root}").case_ids == ["a", "b"]
    assert open_volume_dataset(str(root)).case_ids == ["a", "b"]
    (root / "train.list").write_text("b\n")
    assert open_volume_dataset(f"folder:{root}", split="train", cache=False).case_ids == ["b"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsslInputError, match="cannot tell the dataset layout"):
        open_volume_dataset(str(tmp_path / "empty"))
    with pytest.raises(MedsslInputError, match="valid layouts: la .*folder"):
        open_volume_dataset(f"coco:{root}")


# ----------------------------------------------------------------------------- classification
def test_image_folder(tmp_path):
    arrays = {}
    for cls, names in (("dog", ["d1", "d2"]), ("cat", ["c1"])):
        for k, n in enumerate(names):
            arr = np.full((4, 5), 10 * len(n) + k, np.uint8)
            arr[0, 0] = k
            arrays[n] = arr
            write_png(tmp_path / cls / f"{n}.png", arr)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert ds.targets == [0, 1, 1] and len(ds) == 3
    image, target = ds[2]
    assert target == 1
    np.testing.assert_array_equal(image, arrays["d2"])
    with pytest.raises(MedsslInputError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path / "cat")
    (tmp_path / "e" / "empty").mkdir(parents=True)
    with pytest.raises(MedsslInputError, match="empty dataset"):
        ImageFolderDataset(tmp_path / "e")


def test_csv_classification(tmp_path):
    for n in ("a", "b", "c"):
        write_png(tmp_path / "img" / f"{n}.png", np.full((3, 3), ord(n), np.uint8))
    csv = tmp_path / "list.csv"
    csv.write_text("image,label,split\nimg/a.png,10,train\nimg/b.png,2,test\nimg/c.png,1,train\n")
    ds = CsvClassificationDataset(csv)
    assert ds.classes == ["1", "2", "10"]  # integers sort numerically
    assert ds.targets == [2, 1, 0]
    image, target = ds[1]
    assert target == 1 and image[0, 0] == ord("b")
    train = CsvClassificationDataset(csv, split="train")
    assert train.classes == ["1", "2", "10"] and train.targets == [2, 0]
    csv.write_text("image,label\nimg/a.png,cat\nimg/c.png,ant\n")
    assert CsvClassificationDataset(csv, root=tmp_path).classes == ["ant", "cat"]
    with pytest.raises(MedsslInputError, match="no split column"):
        CsvClassificationDataset(csv, split="train")
    csv.write_text("path,class\nimg/a.png,1\n")
    with pytest.raises(MedsslInputError, match="bad header path,class; expected columns image,label"):
        CsvClassificationDataset(csv)
    csv.write_text("image,label\nimg/a.png,1\nimg/zz.png,2\n")
    with pytest.raises(MedsslInputError, match="1 image\\(s\\) not found .*img/zz.png"):
        CsvClassificationDataset(csv)
    csv.write_text("image,label\n")
    with pytest.raises(MedsslInputError, match="empty dataset"):
        CsvClassificationDataset(csv)


# ----------------------------------------------------------------------------- COCO
def fortran_rle(mask):
    """Uncompressed COCO RLE computed directly: run lengths of the column-major pixel sequence,
    starting with a run of zeros."""
    flat = mask.ravel(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def coco_fixture(tmp_path):
    h, w = 20, 30
    write_png(tmp_path / "images" / "one.png", np.full((h, w), 50, np.uint8))
    write_png(tmp_path / "images" / "two.png", np.full((h, w), 90, np.uint8))
    m1 = np.zeros((h, w), np.uint8)
    m1[3:9, 4:15] = 1
    m1[5, 20] = 1
    from pycocotools import mask as mask_utils

    m2 = np.zeros((h, w), np.uint8)
    m2[10:18, 2:6] = 1
    rle2 = mask_utils.encode(np.asfortranarray(m2))
    rle2["counts"] = rle2["counts"].decode("ascii")
    data = {
        "images": [{"id": 1, "file_name": "images/one.png", "height": h, "width": w},
                   {"id": 2, "file_name": "images/two.png", "height": h, "width": w}],
        "categories": [{"id": 3, "name": "lesion"}, {"id": 1, "name": "organ"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [4, 3, 17, 6], "segmentation": fortran_rle(m1)},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [2, 10, 4, 8], "segmentation": rle2},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [20, 2, 8, 6],
             "segmentation": [[20, 2, 28, 2, 28, 8, 20, 8]]},
            {"id": 13, "image_id": 2, "category_id": 3, "bbox": [0, 0, 30, 20]},
        ],
    }
    return data, m1, m2


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_coco_boxes_and_masks(tmp_path):
    data, m1, m2 = coco_fixture(tmp_path)
    ds = CocoDataset(tmp_path, write_json(tmp_path / "ann.json", data))
    assert len(ds) == 2 and ds.classes == ["organ", "lesion"]
    s = ds[0]
    assert s.image.shape == (20, 30) and s.image_id == 1 and s.file_name == "images/one.png"
    np.testing.assert_array_equal(s.boxes, np.array([[4, 3, 21, 9], [2, 10, 6, 18], [20, 2, 28, 8]], np.float32))
    assert s.category_ids.tolist() == [3, 1, 1] and s.iscrowd.tolist() == [False] * 3
    assert s.masks.shape == (3, 20, 30) and s.masks.dtype == np.uint8
    np.testing.assert_array_equal(s.masks[0], m1)  # uncompressed RLE
    np.testing.assert_array_equal(s.masks[1], m2)  # compressed RLE
    poly = s.masks[2]  # the 8x6 rectangle polygon: inside its box, about 48 pixels
    ys, xs = np.nonzero(poly)
    assert xs.min() >= 20 and xs.max() <= 28 and ys.min() >= 2 and ys.max() <= 8
    assert 35 <= poly.sum() <= 63
    t = ds[1]
    assert t.masks is None and t.boxes.tolist() == [[0, 0, 30, 20]]


def test_coco_validation(tmp_path):
    data, _, _ = coco_fixture(tmp_path)
    bad = json.loads(json.dumps(data))
    bad["images"][1]["file_name"] = "images/missing.png"
    with pytest.raises(MedsslInputError, match="1 referenced image\\(s\\) not found .*images/missing.png"):
        CocoDataset(tmp_path, write_json(tmp_path / "a.json", bad))
    bad = json.loads(json.dumps(data))
    bad["annotations"][0]["bbox"] = [25, 3, 10, 6]
    with pytest.raises(MedsslInputError, match="annotation 10: box .* outside its 30x20 image"):
        CocoDataset(tmp_path, write_json(tmp_path / "b.json", bad))
    bad = json.loads(json.dumps(data))
    bad["annotations"][1]["category_id"] = 99
    with pytest.raises(MedsslInputError, match="annotation 11: unknown category_id 99"):
        CocoDataset(tmp_path, write_json(tmp_path / "c.json", bad))
    bad = json.loads(json.dumps(data))
    bad["annotations"][1]["image_id"] = 7
    with pytest.raises(MedsslInputError, match="unknown image_id 7"):
        CocoDataset(tmp_path, write_json(tmp_path / "d.json", bad))
    (tmp_path / "e.json").write_text("{not json")
    with pytest.raises(MedsslInputError, match="not valid JSON"):
        CocoDataset(tmp_path, tmp_path / "e.json")
    with pytest.raises(MedsslInputError, match="lists 'images', 'annotations', 'categories'"):
        CocoDataset(tmp_path, write_json(tmp_path / "f.json", {"images": []}))
    bad = json.loads(json.dumps(data))
    bad["images"][0]["height"] = 21  # disagrees with the file
    ds = CocoDataset(tmp_path, write_json(tmp_path / "g.json", bad))
    with pytest.raises(MedsslInputError, match="image is 20x30 \\(HxW\\) but the annotation file says 21x30"):
        ds[0]
