"""Generic dataset layouts: image/label folders, class folders, CSV lists and COCO detection.

* :class:`FolderSegmentationDataset`: ``<root>/images/<name>`` + ``<root>/labels/<name>`` (a
  :class:`~medssl.data.spec.VolumeDataset`; the embedded synthetic datasets use this layout).
* :class:`ImageFolderDataset`: ``<root>/<class>/<image>`` classification.
* :class:`CsvClassificationDataset`: a CSV with columns ``image,label[,split]``.
* :class:`CocoDataset`: COCO-style detection / instance segmentation; file names resolve against the
  root or its ``images/`` folder, and :func:`find_coco_annotations` finds the annotation file of the
  usual ``<root>/annotations/instances*.json`` layout.
* :func:`imagefolder_files`: the images of an ImageFolder root, with or without split folders
  (``<root>/[<split>/]<class>/<image>``).

Masks folders (``<root>/images/`` + ``<root>/masks/``) hold integer masks in which
:data:`IGNORE_LABEL` (255) marks pixels that losses and metrics leave out.

Images are read with :func:`medssl.data.io.read_image`, labels with :func:`medssl.data.io.read_label`;
arrays keep the reader's spatial-first axis order. Problems a user can cause raise
:class:`~medssl.errors.MedsslInputError` naming the file or folder.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medssl.data.spec import SegmentationCase, freeze_case
from medssl.errors import MedsslInputError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg",
                  ".tif", ".tiff", ".bmp", ".dcm", ".h5")
_SHOW = 5

#: Mask value of pixels that losses and metrics ignore (the annotators' "ignore" regions).
IGNORE_LABEL = 255


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else "")


def strip_suffix(name: str) -> str:
    """A file name without its image extension (``a.nii.gz`` -> ``a``; unknown extensions: last one)."""
    low = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem if "." in name.strip(".") else name


def _entries(folder: Path) -> dict[str, Path]:
    """Case name -> path for the visible files and folders (DICOM series) in ``folder``."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        key = strip_suffix(p.name) if p.is_file() else p.name
        if key in found:
            raise MedsslInputError(folder, f"two entries share the case name {key!r}: {found[key].name}, {p.name}")
        found[key] = p
    return found


def _read_list(path: Path) -> list[str]:
    ids = [strip_suffix(Path(line.strip().replace("\\", "/")).name) for line in path.read_text(encoding="utf-8").splitlines()
           if line.strip() and not line.strip().startswith("#")]
    if not ids:
        raise MedsslInputError(path, "split list is empty")
    return ids


# ----------------------------------------------------------------------------- segmentation folders
class FolderSegmentationDataset:
    """Segmentation pairs ``<root>/images/<name>`` + ``<root>/labels/<name>`` (a VolumeDataset).

    Names match after stripping the image extension (``case1.nii.gz`` pairs with ``case1.nii.gz`` or
    ``case1.nii``). NIfTI/NRRD/DICOM volumes give (H, W, D) cases, PNG images (H, W) ones.

    Args:
        root: dataset folder.
        split: None for every case, or a split name whose list ``<root>/<split>.list`` (case names,
            one per line) selects and orders the cases.
        cache: keep loaded cases in memory (their arrays are then read-only).
        labels_required: an image without a label partner is an error (default); when False it is
            returned with ``label=None`` (unlabeled).
        binary: read labels as {0, 1} (any non-zero value = foreground); False keeps label values.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        cache: bool = True,
        labels_required: bool = True,
        binary: bool = True,
    ) -> None:
        self.root = Path(root)
        images_dir, labels_dir = self.root / "images", self.root / "labels"
        if not self.root.is_dir():
            raise MedsslInputError(self.root, "dataset folder not found")
        if not images_dir.is_dir():
            raise MedsslInputError(images_dir, "missing images/ folder (expected <root>/images + <root>/labels)")
        if not labels_dir.is_dir() and labels_required:
            raise MedsslInputError(labels_dir, "missing labels/ folder (pass labels_required=False for unlabeled data)")
        images = _entries(images_dir)
        labels = _entries(labels_dir) if labels_dir.is_dir() else {}
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise MedsslInputError(labels_dir, f"{len(orphans)} label(s) without an image of the same name: {_names(orphans)}")
        if split is not None:
            list_path = self.root / f"{split}.list"
            if not list_path.is_file():
                raise MedsslInputError(list_path, f"split list for split {split!r} not found")
            names = _read_list(list_path)
            unknown = [n for n in names if n not in images]
            if unknown:
                raise MedsslInputError(list_path, f"{len(unknown)} listed case(s) not in {images_dir}: {_names(unknown)}")
        else:
            names = sorted(images)
        if not names:
            raise MedsslInputError(images_dir, "empty dataset (no images)")
        unpaired = [n for n in names if n not in labels]
        if unpaired and labels_required:
            raise MedsslInputError(images_dir, f"{len(unpaired)} image(s) without a label in {labels_dir}: {_names(unpaired)}")
        self.case_ids: list[str] = names
        self.image_paths: list[Path] = [images[n] for n in names]
        self.label_paths: list[Path | None] = [labels.get(n) for n in names]
        self.cache = cache
        self.binary = binary
        self._cache: dict[int, SegmentationCase] = {}

    def __len__(self) -> int:
        return len(self.case_ids)

    def load(self, i: int) -> SegmentationCase:
        """Read case ``i``: image float32 (H, W[, D]), label uint8 or None, affine, spacing (mm)."""
        if i in self._cache:
            return self._cache[i]
        from medssl.data.io import read_image, read_label

        img = read_image(self.image_paths[i])
        image = np.asarray(img.array, dtype=np.float32)
        label = None
        label_path = self.label_paths[i]
        if label_path is not None:
            lab = read_label(label_path, like=img, binary=self.binary, allow_empty=True)
            label = np.asarray(lab.array)
            if label.shape != image.shape[: label.ndim] or label.ndim != len(img.spacing):
                raise MedsslInputError(label_path, f"label shape {label.shape} does not match image shape {image.shape}")
            if label.size and (label.min() < 0 or label.max() > 255):
                raise MedsslInputError(label_path, "label values must lie in [0, 255]")
            label = label.astype(np.uint8)
        case = SegmentationCase(image=image, label=label, affine=np.asarray(img.affine, dtype=np.float64),
                                spacing=tuple(float(s) for s in img.spacing), case_id=self.case_ids[i],
                                source=str(self.image_paths[i]))
        if self.cache:
            self._cache[i] = freeze_case(case)
        return case


# ----------------------------------------------------------------------------- classification
def _read_pixels(path: Path) -> np.ndarray:
    from medssl.data.io import read_image

    return np.asarray(read_image(path).array)


class _ClassificationSamples:
    """Shared access for classification datasets holding ``samples = [(path, class index), ...]``."""

    samples: list[tuple[Path, int]]
    classes: list[str]

    @property
    def targets(self) -> list[int]:
        """The class index of every sample."""
        return [c for _, c in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        path, target = self.samples[i]
        return _read_pixels(path), target


class ImageFolderDataset(_ClassificationSamples):
    """Classification images in ``<root>/<class name>/<image>`` folders.

    ``classes`` are the sorted sub-folder names; item ``i`` is ``(image array, class index)`` with
    the image spatial-first ((H, W), (H, W, C) or (H, W, D)) as :func:`medssl.data.io.read_image`
    returns it.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise MedsslInputError(self.root, "image folder not found")
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise MedsslInputError(self.root, "no class sub-folders (expected <root>/<class>/<image>)")
        self.classes: list[str] = [p.name for p in class_dirs]
        self.samples: list[tuple[Path, int]] = []
        for idx, d in enumerate(class_dirs):
            for p in sorted(d.iterdir()):
                if not p.name.startswith(".") and (p.is_dir() or p.name.lower().endswith(IMAGE_SUFFIXES)):
                    self.samples.append((p, idx))
        if not self.samples:
            raise MedsslInputError(self.root, "empty dataset (no images in the class folders)")


def _image_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")
            and p.name.lower().endswith(IMAGE_SUFFIXES)]


def _visible_dirs(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def is_imagefolder(root: Path) -> bool:
    """Whether ``root`` is an ImageFolder root: ``<root>/<class>/<image>`` or ``<root>/<split>/<class>/<image>``.

    The root itself holds no image files; some sub-folder holds images (classes) or sub-folders that
    hold images (split folders).
    """
    root = Path(root)
    if not root.is_dir() or _image_files(root) or (root / "images").is_dir():
        return False
    subs = _visible_dirs(root)
    return any(_image_files(d) for d in subs) or any(_image_files(c) for d in subs for c in _visible_dirs(d))


def imagefolder_files(root: str | Path) -> dict[str, dict[str, list[Path]]]:
    """The image files of an ImageFolder root: ``{split: {class: [files, sorted]}}``.

    Without split folders (``<root>/<class>/<image>``) the one split is named ``""``. A folder counts as
    a split folder when it holds no images itself but class sub-folders that do.

    Raises:
        MedsslInputError: ``root`` is not an ImageFolder root.
    """
    root = Path(root)
    if not is_imagefolder(root):
        raise MedsslInputError(root, "not an ImageFolder root (expected <root>/[<split>/]<class>/<image>)")
    subs = _visible_dirs(root)
    if any(_image_files(d) for d in subs):
        return {"": {d.name: _image_files(d) for d in subs if _image_files(d)}}
    return {d.name: {c.name: _image_files(c) for c in _visible_dirs(d) if _image_files(c)}
            for d in subs if any(_image_files(c) for c in _visible_dirs(d))}



def _class_order(values: Sequence[str]) -> list[str]:
    unique = set(values)
    try:
        return sorted(unique, key=lambda v: (int(v), v))
    except ValueError:
        return sorted(unique)


class CsvClassificationDataset(_ClassificationSamples):
    """Classification images listed in a CSV with header ``image,label[,split]``.

    ``image`` paths are relative to ``root`` (default: the CSV's folder) unless absolute; ``label``
    is a class name. ``classes`` are the distinct labels of the whole file, sorted numerically when
    all are integers and alphabetically otherwise; the class index is the position in ``classes``.
    ``split`` keeps only the rows whose ``split`` column equals it. Item ``i`` is
    ``(image array, class index)``.
    """

    REQUIRED = ("image", "label")

    def __init__(self, csv_path: str | Path, root: str | Path | None = None, split: str | None = None) -> None:
        self.csv_path = Path(csv_path)
        if not self.csv_path.is_file():
            raise MedsslInputError(self.csv_path, "CSV file not found")
        self.root = Path(root) if root is not None else self.csv_path.parent
        if not self.root.is_dir():
            raise MedsslInputError(self.root, "image root folder not found")
        with open(self.csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if any(c not in header for c in self.REQUIRED):
                raise MedsslInputError(self.csv_path, f"bad header {','.join(header) or '(empty)'}; "
                                       "expected columns image,label[,split]")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
        if not rows:
            raise MedsslInputError(self.csv_path, "empty dataset (no rows)")
        for n, row in enumerate(rows, start=2):
            if not row.get("image") or not row.get("label"):
                raise MedsslInputError(self.csv_path, f"line {n}: empty image or label")
        self.classes: list[str] = _class_order([r["label"] for r in rows])
        if split is not None:
            if "split" not in header:
                raise MedsslInputError(self.csv_path, f"no split column, cannot select split {split!r}")
            rows = [r for r in rows if r["split"] == split]
            if not rows:
                raise MedsslInputError(self.csv_path, f"no rows with split {split!r}")
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        missing = []
        for r in rows:
            p = Path(r["image"])
            p = p if p.is_absolute() else self.root / p
            if not p.exists():
                missing.append(r["image"])
            self.samples.append((p, index[r["label"]]))
        if missing:
            raise MedsslInputError(self.csv_path, f"{len(missing)} image(s) not found under {self.root}: {_names(missing)}")



# ----------------------------------------------------------------------------- COCO
@dataclass
class CocoSample:
    """One COCO image with its annotations.

    Attributes:
        image: pixels (H, W) or (H, W, C) as read by :func:`medssl.data.io.read_image`.
        boxes: (N, 4) float32 boxes in pixels, ``(x0, y0, x1, y1)`` (COCO ``xywh`` converted).
        category_ids: (N,) int64 COCO category ids.
        masks: (N, H, W) uint8 instance masks, or None unless every annotation of the image has a
            segmentation (polygons or RLE).
        iscrowd: (N,) bool crowd flags.
        image_id: COCO image id.
        file_name: the image path relative to the dataset root.
    """

    image: np.ndarray
    boxes: np.ndarray
    category_ids: np.ndarray
    masks: np.ndarray | None
    iscrowd: np.ndarray
    image_id: int
    file_name: str


def coco_image_root(root: Path, file_names: Sequence[str]) -> Path:
    """The folder COCO ``file_names`` are relative to: ``root``, else ``root/images`` when all are found there."""
    if all((root / f).is_file() for f in file_names[:_SHOW]) or not (root / "images").is_dir():
        return root
    return root / "images" if all((root / "images" / f).is_file() for f in file_names[:_SHOW]) else root


def find_coco_annotations(root: str | Path) -> Path:
    """The COCO annotation file of a dataset folder.

    ``<root>/annotations.json`` when it exists, else the one ``<root>/annotations/instances*.json``.

    Raises:
        MedsslInputError: none found, or several candidates (the message lists them).
    """
    root = Path(root)
    if (root / "annotations.json").is_file():
        return root / "annotations.json"
    found = sorted((root / "annotations").glob("instances*.json")) if (root / "annotations").is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise MedsslInputError(root, "no COCO annotation file (expected annotations.json or "
                               "annotations/instances*.json)")
    raise MedsslInputError(root, f"several COCO annotation files, name one: {_names([p.name for p in found])}")


class CocoDataset:
    """COCO-style detection / instance segmentation: ``annotation_json`` + images under ``root``.

    ``file_name`` entries are relative to ``root``, or to ``root/images`` (the usual layout with
    ``root/annotations/instances*.json``) when they are found there (:attr:`image_root`).

    Validated on construction: the JSON structure, every image file exists, every annotation refers
    to a known image and category, boxes have positive size and lie inside their image (0.5 pixel
    tolerance). Masks are decoded with pycocotools (polygons, compressed and uncompressed RLE).
    """

    TOLERANCE = 0.5

    def __init__(self, root: str | Path, annotation_json: str | Path) -> None:
        self.root = Path(root)
        self.annotation_json = Path(annotation_json)
        src = self.annotation_json
        if not self.root.is_dir():
            raise MedsslInputError(self.root, "image folder not found")
        if not src.is_file():
            raise MedsslInputError(src, "annotation file not found")
        try:
            data = json.loads(src.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MedsslInputError(src, f"not valid JSON ({err})") from err
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
            raise MedsslInputError(src, "expected a JSON object with lists 'images', 'annotations', 'categories'")
        try:
            self.categories: list[dict] = sorted(data["categories"], key=lambda c: int(c["id"]))
            cat_ids = {int(c["id"]) for c in self.categories}
            self.images: list[dict] = [dict(im, id=int(im["id"]), width=int(im["width"]), height=int(im["height"]))
                                       for im in data["images"]]
            for im in self.images:
                str(im["file_name"])
        except (KeyError, TypeError, ValueError) as err:
            raise MedsslInputError(src, f"image or category entry lacks a valid field: {err}") from err
        if not self.images:
            raise MedsslInputError(src, "empty dataset (no images)")
        by_id = {im["id"]: im for im in self.images}
        if len(by_id) != len(self.images):
            raise MedsslInputError(src, "duplicate image ids")
        self.image_root = coco_image_root(self.root, [str(im["file_name"]) for im in self.images])
        missing = [im["file_name"] for im in self.images if not (self.image_root / im["file_name"]).is_file()]
        if missing:
            raise MedsslInputError(src, f"{len(missing)} referenced image(s) not found under {self.root}: {_names(missing)}")
        self._anns: dict[int, list[dict]] = {i: [] for i in by_id}
        for k, ann in enumerate(data["annotations"]):
            where = f"annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
            try:
                image_id, cat = int(ann["image_id"]), int(ann["category_id"])
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError) as err:
                raise MedsslInputError(src, f"{where}: needs image_id, category_id and bbox [x, y, w, h]") from err
            if image_id not in by_id:
                raise MedsslInputError(src, f"{where}: unknown image_id {image_id}")
            if cat not in cat_ids:
                raise MedsslInputError(src, f"{where}: unknown category_id {cat}")
            im = by_id[image_id]
            t = self.TOLERANCE
            if w <= 0 or h <= 0 or x < -t or y < -t or x + w > im["width"] + t or y + h > im["height"] + t:
                raise MedsslInputError(src, f"{where}: box [x={x}, y={y}, w={w}, h={h}] is empty or outside its "
                                       f"{im['width']}x{im['height']} image {im['file_name']}")
            self._anns[image_id].append(ann)

    @property
    def classes(self) -> list[str]:
        """Category names, in category-id order."""
        return [str(c.get("name", c["id"])) for c in self.categories]

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, i: int) -> Path:
        """The file of image ``i``."""
        return self.image_root / str(self.images[i]["file_name"])

    def annotations(self, i: int) -> list[dict]:
        """The raw annotation dicts of image ``i``."""
        return self._anns[self.images[i]["id"]]

    def instance_mask(self, ann: dict, height: int, width: int) -> np.ndarray:
        """(H, W) uint8 {0, 1} mask of one annotation (polygons, compressed or uncompressed RLE)."""
        from pycocotools import mask as mask_utils

        seg = ann["segmentation"]
        if isinstance(seg, list):
            polys = [p for p in seg if len(p) >= 6]
            if not polys:
                raise MedsslInputError(self.annotation_json, f"annotation {ann.get('id')}: polygon with fewer than 3 points")
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, height, width)
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)):
            rle = dict(seg)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        else:
            raise MedsslInputError(self.annotation_json, f"annotation {ann.get('id')}: unrecognised segmentation format")
        with warnings.catch_warnings():  # pycocotools' compiled decoder trips a numpy-2 deprecation notice
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode(rle)
        if m.shape[:2] != (height, width):
            raise MedsslInputError(self.annotation_json, f"annotation {ann.get('id')}: mask size {m.shape[:2]} "
                                   f"differs from the image size {(height, width)}")
        return np.asarray(m, dtype=np.uint8).reshape(height, width)

    def __getitem__(self, i: int) -> CocoSample:
        info = self.images[i]
        height, width = info["height"], info["width"]
        path = self.image_path(i)
        image = _read_pixels(path)
        if image.shape[:2] != (height, width):
            raise MedsslInputError(path, f"image is {image.shape[0]}x{image.shape[1]} (HxW) but the annotation file "
                                   f"says {height}x{width}")
        anns = self.annotations(i)
        boxes = np.array([[float(v) for v in a["bbox"]] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        cats = np.array([int(a["category_id"]) for a in anns], dtype=np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        masks = None
        if anns and all(a.get("segmentation") for a in anns):
            masks = np.stack([self.instance_mask(a, height, width) for a in anns])
        return CocoSample(image=image, boxes=boxes, category_ids=cats, masks=masks, iscrowd=crowd,
                          image_id=info["id"], file_name=str(info["file_name"]))
