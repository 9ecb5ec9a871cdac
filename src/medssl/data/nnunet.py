"""The nnU-Net v2 / Medical Segmentation Decathlon raw layout (data spec ``nnunet:<folder>``).

::

    <folder>/dataset.json     channel_names (MSD: modality), labels, file_ending (MSD: .nii.gz)
    <folder>/imagesTr/<case>_0000<file_ending>      training images, one file per channel
    <folder>/labelsTr/<case><file_ending>           labels of the labelled training cases
    <folder>/imagesTs/<case>_0000<file_ending>      images without labels (optional)

The Decathlon's own files (``Task02_Heart``: ``imagesTr/la_003.nii.gz``, ``modality`` instead of
``channel_names`` in dataset.json) carry no channel suffix; both namings are read. Labelled cases are the ``imagesTr`` cases with a ``labelsTr`` partner; every other image
(``imagesTr`` without label, ``imagesTs``) is unlabeled. medssl trains single-channel models, so a
dataset with more than one channel is refused. Labels are read as binary (any non-zero value is
foreground) like the ``folder`` layout. Every problem raises :class:`~medssl.errors.MedsslInputError`
naming the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medssl.data.layouts import FolderSegmentationDataset
from medssl.errors import MedsslInputError

__all__ = ["NnUNetCase", "NnUNetDataset", "NnUNetLayout", "is_nnunet_folder", "nnunet_images", "nnunet_root",
           "read_nnunet_layout"]

#: The data-spec prefix of the layout.
NNUNET_PREFIX = "nnunet:"
#: File ending of Decathlon datasets, whose dataset.json has no ``file_ending``.
MSD_FILE_ENDING = ".nii.gz"
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class NnUNetCase:
    """One case: its id, its (single-channel) image file and its label file (None: unlabeled)."""

    case_id: str
    image: Path
    label: Path | None


@dataclass(frozen=True)
class NnUNetLayout:
    """A validated nnU-Net / Decathlon raw dataset.

    Attributes:
        root: the dataset folder.
        file_ending: the ending of every image and label file (e.g. ``.nii.gz``).
        channel_names: channel index -> name (one channel).
        labels: label name -> value, as in nnU-Net v2 (Decathlon's index -> name is turned around).
        cases: labelled ``imagesTr`` cases (sorted), then unlabeled ``imagesTr`` cases, then ``imagesTs``.
    """

    root: Path
    file_ending: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    cases: list[NnUNetCase]

    @property
    def labelled(self) -> list[NnUNetCase]:
        """The cases with a label."""
        return [c for c in self.cases if c.label is not None]


def is_nnunet_folder(root: Path) -> bool:
    """Whether ``root`` looks like an nnU-Net / Decathlon raw dataset (``dataset.json`` + ``imagesTr/``)."""
    return (root / "dataset.json").is_file() and (root / "imagesTr").is_dir()


def nnunet_root(data: str | Path) -> Path | None:
    """The dataset folder when ``data`` is ``nnunet:<folder>`` or an nnU-Net raw folder, else None."""
    text = str(data)
    if text.startswith(NNUNET_PREFIX):
        return Path(text[len(NNUNET_PREFIX):]).expanduser()
    path = Path(text)
    return path if path.is_dir() and is_nnunet_folder(path) else None


def nnunet_images(root: str | Path, split: str | None = None) -> list[Path]:
    """The image files of the raw dataset in ``root``, in layout order (for pretraining and localization).

    Args:
        root: the dataset folder.
        split: None or ``all``: every image (``imagesTr`` and ``imagesTs``); ``train``: ``imagesTr`` only.

    Raises:
        MedsslInputError: an invalid dataset (see :func:`read_nnunet_layout`) or another split name.
    """
    layout = read_nnunet_layout(root)
    if split in (None, "all"):
        return [c.image for c in layout.cases]
    if split == "train":
        return [c.image for c in layout.cases if c.image.parent.name == "imagesTr"]
    raise MedsslInputError(split, "the nnU-Net layout has the splits all (imagesTr + imagesTs) and train (imagesTr)")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MedsslInputError(path, "missing dataset.json (nnU-Net raw layout: dataset.json, imagesTr/, "
                               "labelsTr/, imagesTs/)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MedsslInputError(path, f"not valid JSON ({err.__class__.__name__}: {err})") from None
    if not isinstance(data, dict):
        raise MedsslInputError(path, "expected a JSON object with channel_names, labels and file_ending")
    return data


def _channels(data: dict[str, Any], path: Path) -> dict[str, str]:
    channels = data.get("channel_names", data.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise MedsslInputError(path, "needs 'channel_names' (nnU-Net v2) or 'modality' (Decathlon), e.g. "
                               '{"0": "MRI"}')
    if len(channels) != 1:
        raise MedsslInputError(path, f"{len(channels)} channels ({', '.join(map(str, channels.values()))}); "
                               "medssl trains single-channel models: expected one channel")
    return {str(k): str(v) for k, v in channels.items()}


def _labels(data: dict[str, Any], path: Path) -> dict[str, int]:
    labels = data.get("labels")
    if not isinstance(labels, dict) or len(labels) < 2:
        raise MedsslInputError(path, "needs 'labels' with background and at least one structure, e.g. "
                               '{"background": 0, "left_atrium": 1}')
    try:
        if all(str(k).isdigit() for k in labels):  # Decathlon: {"0": "background", "1": "left atrium"}
            return {str(name): int(value) for value, name in labels.items()}
        return {str(name): int(value) for name, value in labels.items()}
    except (TypeError, ValueError):
        raise MedsslInputError(path, "'labels' must map names to integer values (nnU-Net v2) or integer "
                               "strings to names (Decathlon)") from None


def _file_ending(data: dict[str, Any], path: Path) -> str:
    ending = data.get("file_ending", MSD_FILE_ENDING if "modality" in data else None)
    if not isinstance(ending, str) or not ending.startswith("."):
        raise MedsslInputError(path, "needs 'file_ending', e.g. \".nii.gz\"")
    return ending


def _files(folder: Path, ending: str) -> list[Path]:
    """The visible files of ``folder`` (sorted), each checked to end in ``ending``."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    for p in files:
        if not p.is_file() or not p.name.endswith(ending) or len(p.name) == len(ending):
            raise MedsslInputError(p, f"expected a file ending in {ending!r} (file_ending of dataset.json)")
    return files


def _images(folder: Path, ending: str, suffixed: bool) -> dict[str, Path]:
    """Case id -> image of ``folder``: ``<case>_0000<ending>`` (nnU-Net v2, ``suffixed``) or ``<case><ending>``
    (Decathlon)."""
    found: dict[str, Path] = {}
    for p in _files(folder, ending):
        case = p.name[: -len(ending)]
        if suffixed:
            match = _CHANNEL.match(case)
            if match is None:
                raise MedsslInputError(p, f"expected <case>_0000{ending} (nnU-Net channel suffix)")
            if match["channel"] != "0000":
                raise MedsslInputError(p, f"channel {int(match['channel'])} image: medssl trains single-channel "
                                       "models (only _0000 files expected)")
            case = match["case"]
        if case in found:
            raise MedsslInputError(p, f"a second image of case {case!r} (also {found[case].name})")
        found[case] = p
    return found


def read_nnunet_layout(root: str | Path) -> NnUNetLayout:
    """Read and validate the raw dataset in ``root`` (see the module docstring).

    Raises:
        MedsslInputError: missing folder / dataset.json / imagesTr, invalid dataset.json, more than one
            channel, a file with another ending, a label without an image, or no images at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise MedsslInputError(root, "dataset folder not found")
    json_path = root / "dataset.json"
    data = _read_json(json_path)
    channels, labels, ending = _channels(data, json_path), _labels(data, json_path), _file_ending(data, json_path)
    if not (root / "imagesTr").is_dir():
        raise MedsslInputError(root / "imagesTr", "missing imagesTr/ folder (nnU-Net raw layout)")
    suffixed = "channel_names" in data  # nnU-Net v2 names channels; the Decathlon's files have no suffix
    train = _images(root / "imagesTr", ending, suffixed)
    test = _images(root / "imagesTs", ending, suffixed)
    label_files = {p.name[: -len(ending)]: p for p in _files(root / "labelsTr", ending)}
    for case, path in label_files.items():
        if case not in train:
            expected = f"{case}_0000{ending}" if suffixed else f"{case}{ending}"
            raise MedsslInputError(path, f"label without an image (expected imagesTr/{expected})")
    if not train and not test:
        raise MedsslInputError(root / "imagesTr", f"no images ending in {ending!r}")
    labelled = [NnUNetCase(c, p, label_files[c]) for c, p in train.items() if c in label_files]
    unlabeled = [NnUNetCase(c, p, None) for c, p in train.items() if c not in label_files]
    clash = sorted(set(test) & set(train))
    if clash:
        raise MedsslInputError(test[clash[0]], f"case {clash[0]!r} is in both imagesTr/ and imagesTs/")
    held = [NnUNetCase(c, p, None) for c, p in test.items()]
    return NnUNetLayout(root=root, file_ending=ending, channel_names=channels, labels=labels,
                        cases=labelled + unlabeled + held)


class NnUNetDataset(FolderSegmentationDataset):
    """The cases of an nnU-Net / Decathlon raw dataset as a :class:`~medssl.data.spec.VolumeDataset`.

    Ordered as :attr:`NnUNetLayout.cases` (labelled first); ``label_paths[i]`` is None for unlabeled cases.
    Cases are read like the ``folder`` layout's (binary labels, geometry checked).

    Args:
        root: the dataset folder.
        cache: keep loaded cases in memory (their arrays are then read-only).
        binary: read labels as {0, 1}; False keeps label values.
    """

    def __init__(self, root: str | Path, cache: bool = True, binary: bool = True) -> None:  # noqa: D107
        self.layout = read_nnunet_layout(root)
        self.root = self.layout.root
        self.case_ids = [c.case_id for c in self.layout.cases]
        self.image_paths = [c.image for c in self.layout.cases]
        self.label_paths = [c.label for c in self.layout.cases]
        self.cache = cache
        self.binary = binary
        self._cache = {}
