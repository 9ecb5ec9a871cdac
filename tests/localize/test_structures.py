"""The ``structures`` backend on synthesized atrium3d / brain2d / chest2d cases with the real MiniLM encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medssl.data.io import read_image
from medssl.data.synthetic import synthesize
from medssl.errors import MedsslInputError
from medssl.localize import create_localizer
from medssl.localize.structures import SentenceEncoder, StructuresLocalizer, prompt_spans

LA_PROMPT = "A cardiac MRI highlighting the left atrium"
TUMOUR_PROMPT = "a brain MRI showing a suspicious irregular mass suggestive of a tumour"


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    shapes = {"atrium3d": (32, 32, 24), "brain2d": (48, 48), "chest2d": (48, 48)}
    return {name: synthesize(name, root / name, n=2, seed=0, shape=shape) for name, shape in shapes.items()}


def _case(root: Path, kind: str) -> tuple[Path, np.ndarray, dict[str, int]]:
    ext = ".nii.gz" if kind == "atrium3d" else ".png"
    structures = read_image(root / "structures" / f"case_0000{ext}").array
    import json

    names = {v: int(k) for k, v in json.loads((root / "structures.json").read_text()).items()}
    return root / "images" / f"case_0000{ext}", structures, names


def _independent_boxes_roi(mask: np.ndarray, keep: int | None = None) -> tuple[np.ndarray, int]:
    """Fill the bounding box of every (or the ``keep`` largest) full-connectivity component of ``mask``."""
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    ids = list(range(1, n + 1))
    if keep is not None:
        sizes = [(-(labels == i).sum(), i) for i in ids]
        ids = [i for _, i in sorted(sizes)[:keep]]
    roi = np.zeros(mask.shape, bool)
    slices = ndimage.find_objects(labels)
    for i in ids:
        roi[slices[i - 1]] = True
    return roi, len(ids)


def test_left_atrium_prompt_selects_the_left_atrium_in_3d(datasets: dict[str, Path], encoder: SentenceEncoder) -> None:
    image_path, structures, sid = _case(datasets["atrium3d"], "atrium3d")
    image = read_image(image_path)
    result = StructuresLocalizer(encoder=encoder).localize(image, LA_PROMPT)
    matched = [m["name"] for m in result.provenance["matched"]]
    assert matched[0] == "left atrium"
    assert set(matched) <= {"left atrium", "left atrial appendage"}  # never the right atrium or ventricle
    mask = np.isin(structures, [sid[n] for n in matched])
    expected, n_boxes = _independent_boxes_roi(mask)
    assert result.roi.shape == (32, 32, 24) and result.roi.dtype == bool
    np.testing.assert_array_equal(result.roi, expected)
    assert len(result.boxes) == n_boxes
    # the ROI holds the bounding box of the left atrium's voxels (a superset of the label's body)
    body = np.argwhere(structures == sid["left atrium"])
    lo, hi = body.min(0), body.max(0) + 1
    assert result.roi[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].all()
    np.testing.assert_array_equal(result.coarse_mask, mask)


def test_provenance_records_model_params_and_scores(datasets: dict[str, Path], encoder: SentenceEncoder) -> None:
    image_path, _, _ = _case(datasets["atrium3d"], "atrium3d")
    loc = StructuresLocalizer(encoder=encoder)
    prov = loc.localize(read_image(image_path), LA_PROMPT).provenance
    assert prov["backend"] == "structures"
    assert prov["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert prov["model_revision"].startswith("sha256:") and len(prov["model_revision"]) == 7 + 16
    assert prov["params"] == loc.params() and prov["params"]["threshold"] == 0.4
    assert prov["prompt"] == LA_PROMPT
    assert set(prov["scores"]) == {"left atrium", "left atrial appendage", "pulmonary veins", "left ventricle",
                                   "right atrium", "aorta", "pulmonary artery", "spine"}
    assert prov["matched"][0]["score"] == prov["scores"]["left atrium"] >= 0.4
    assert prov["medssl_version"] and prov["time"]


def test_tumour_prompt_selects_the_tumor_in_2d(datasets: dict[str, Path], encoder: SentenceEncoder) -> None:
    image_path, structures, sid = _case(datasets["brain2d"], "brain2d")
    result = StructuresLocalizer(encoder=encoder).localize(read_image(image_path), TUMOUR_PROMPT)
    assert [m["name"] for m in result.provenance["matched"]] == ["tumor"]
    expected, n_boxes = _independent_boxes_roi(structures == sid["tumor"])
    assert expected.any()
    np.testing.assert_array_equal(result.roi, expected)
    assert len(result.boxes) == n_boxes


def test_both_lungs_gives_two_components(datasets: dict[str, Path], encoder: SentenceEncoder) -> None:
    image_path, structures, sid = _case(datasets["chest2d"], "chest2d")
    loc = create_localizer("structures", max_components=2, encoder=encoder)
    result = loc.localize(read_image(image_path), "both lungs")
    assert {m["name"] for m in result.provenance["matched"]} == {"left lung", "right lung"}
    expected, _ = _independent_boxes_roi(np.isin(structures, [sid["left lung"], sid["right lung"]]), keep=2)
    assert len(result.boxes) == 2
    np.testing.assert_array_equal(result.roi, expected)


def test_nonsense_prompt_is_a_clear_error(datasets: dict[str, Path], encoder: SentenceEncoder) -> None:
    image_path, _, _ = _case(datasets["chest2d"], "chest2d")
    with pytest.raises(MedsslInputError) as info:
        StructuresLocalizer(encoder=encoder).localize(read_image(image_path), "purple elephant banana keyboard")
    message = str(info.value)
    assert "purple elephant banana keyboard" in message and ">= 0.4" in message
    assert message.count("'") >= 4 and "best:" in message  # best candidates named with their scores


def test_structure_names_are_embedded_once(encoder: SentenceEncoder) -> None:
    first = encoder.encode(["left lung", "heart"], remember=True)
    again = encoder.encode(["heart"])
    np.testing.assert_array_equal(again[0], first[1])
    assert "heart" in encoder._memory and "both lungs" not in encoder._memory
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert prompt_spans("Both  lungs")[1:] == ["both", "lungs", "both lungs"]


def test_in_memory_maps_and_mismatched_grid(encoder: SentenceEncoder) -> None:
    from medssl.data.io import ImageData

    image = ImageData(array=np.zeros((8, 9), np.float32), affine=np.eye(4), spacing=(1.0, 1.0))
    smap = np.zeros((8, 9), np.uint8)
    smap[2:4, 3:7] = 1
    smap[6, 0] = 2
    ctx = {"structures": smap, "structure_names": {1: "heart", 2: "spine"}}
    result = StructuresLocalizer(encoder=encoder).localize(image, "the heart", ctx)
    assert result.boxes == [((2, 4), (3, 7))]
    with pytest.raises(MedsslInputError, match="does not match the image shape"):
        StructuresLocalizer(encoder=encoder).localize(image, "the heart", {**ctx, "structures": smap[:, :5]})
    with pytest.raises(MedsslInputError, match="in-memory image"):
        StructuresLocalizer(encoder=encoder).localize(image, "the heart")
