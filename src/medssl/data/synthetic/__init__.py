"""Embedded synthetic datasets: generated deterministically from a seed, written as ordinary files.

``synthesize(name, out, n=n, seed=seed)`` writes ``n`` cases of one of :data:`SYNTHETIC_DATASETS`
in the generic ``images/`` + ``labels/`` layout (see :mod:`medssl.data.synthetic._writer`):

* ``atrium3d``: left-atrium-like late-gadolinium MRI volumes (96 x 96 x 64 at 1.25 mm), label = left
  atrium (body, vein ostia, appendage), with confusing bright neighbours (:mod:`.atrium3d`).
* ``brain2d`` / ``brain3d``: the MNI152 T1 template, deformed, with tumour-like lesions; classes
  ``no_tumor``, ``glioma_like``, ``meningioma_like``, ``metastasis_like`` (:mod:`.brain`).
* ``chest2d``: chest X-ray-like images; classes ``normal``, ``pneumonia_like``, ``nodule`` (:mod:`.chest2d`).

The per-case generators (``generate_atrium3d_case``, ``generate_brain2d_case``, ...) return arrays in
memory for tests and demos.
"""

from __future__ import annotations

from pathlib import Path

from medssl.data.synthetic._writer import CaseFn, SyntheticDataset, synthesize_dataset
from medssl.data.synthetic.atrium3d import (
    ATRIUM3D_LABEL_STRUCTURES,
    ATRIUM3D_PARAMETERS,
    ATRIUM3D_SHAPE,
    ATRIUM3D_SPACING,
    ATRIUM3D_STRUCTURES,
    generate_atrium3d_case,
)
from medssl.data.synthetic.brain import (
    BRAIN2D_SHAPE,
    BRAIN2D_SPACING,
    BRAIN3D_SHAPE,
    BRAIN3D_SPACING,
    BRAIN_CLASSES,
    BRAIN_LABEL_STRUCTURES,
    BRAIN_LESION_CATEGORIES,
    BRAIN_PARAMETERS,
    BRAIN_STRUCTURES,
    BrainAtlas,
    generate_brain2d_case,
    generate_brain3d_case,
    load_brain_atlas,
)
from medssl.data.synthetic.chest2d import (
    CHEST2D_SHAPE,
    CHEST2D_SPACING,
    CHEST_CATEGORIES,
    CHEST_CLASSES,
    CHEST_LABEL_STRUCTURES,
    CHEST_PARAMETERS,
    CHEST_STRUCTURES,
    generate_chest2d_case,
)
from medssl.errors import MedsslInputError

__all__ = [
    "SYNTHETIC_DATASETS",
    "BrainAtlas",
    "SyntheticDataset",
    "generate_atrium3d_case",
    "generate_brain2d_case",
    "generate_brain3d_case",
    "generate_chest2d_case",
    "load_brain_atlas",
    "synthesize",
]


def _atrium3d_factory(shape: tuple[int, ...], spacing: tuple[float, ...]) -> CaseFn:
    return lambda rng, cls: generate_atrium3d_case(rng, shape, spacing)


def _brain2d_factory(shape: tuple[int, ...], spacing: tuple[float, ...]) -> CaseFn:
    atlas = load_brain_atlas()
    return lambda rng, cls: generate_brain2d_case(rng, atlas, str(cls), shape, spacing)


def _brain3d_factory(shape: tuple[int, ...], spacing: tuple[float, ...]) -> CaseFn:
    atlas = load_brain_atlas()
    return lambda rng, cls: generate_brain3d_case(rng, atlas, str(cls), shape, spacing)


def _chest2d_factory(shape: tuple[int, ...], spacing: tuple[float, ...]) -> CaseFn:
    return lambda rng, cls: generate_chest2d_case(rng, str(cls), shape, spacing)


_BRAIN_DESCRIPTION = (
    "MNI152 T1 template (nilearn) under a random affine and elastic deformation, with scalp and "
    "skull layers, contrast jitter, bias field and Rician noise; lesions by class: glioma_like (deep, "
    "necrotic core, enhancing rim, wide oedema; round, lobulated or infiltrative), meningioma_like "
    "(extra-axial under the skull, homogeneous), metastasis_like (2-5 small round lesions at the "
    "gray/white junction with oedema), no_tumor. Label: tumour (core + rim)."
)

#: Registry of the embedded datasets: name -> description and case generator.
SYNTHETIC_DATASETS: dict[str, SyntheticDataset] = {
    "atrium3d": SyntheticDataset(
        name="atrium3d", version="1", ndim=3, shape=ATRIUM3D_SHAPE, spacing_mm=ATRIUM3D_SPACING,
        description=(
            "Left-atrium-like late-gadolinium MRI volumes, z-scored: irregular atrial body, four "
            "pulmonary veins, appendage (finger, chicken wing or lobe), touching bright neighbours "
            "(aorta, left ventricle, right atrium, pulmonary artery), spine, lungs, fat; bias field, "
            "Rician noise, partial-volume blur, random contrast and pose. Label: left atrium (body + "
            "vein ostia + appendage). Axes: 0 = subject left, 1 = posterior, 2 = superior."),
        structures=ATRIUM3D_STRUCTURES, label_structures=ATRIUM3D_LABEL_STRUCTURES,
        case_factory=_atrium3d_factory, parameters=ATRIUM3D_PARAMETERS,
    ),
    "brain2d": SyntheticDataset(
        name="brain2d", version="1", ndim=2, shape=BRAIN2D_SHAPE, spacing_mm=BRAIN2D_SPACING,
        description="Axial T1-like slices (radiological view, uint8). " + _BRAIN_DESCRIPTION,
        structures=BRAIN_STRUCTURES, label_structures=BRAIN_LABEL_STRUCTURES,
        case_factory=_brain2d_factory, classes=BRAIN_CLASSES, coco_categories=BRAIN_LESION_CATEGORIES,
        parameters=BRAIN_PARAMETERS,
    ),
    "brain3d": SyntheticDataset(
        name="brain3d", version="1", ndim=3, shape=BRAIN3D_SHAPE, spacing_mm=BRAIN3D_SPACING,
        description="T1-like volumes (float32, RAS axes). " + _BRAIN_DESCRIPTION,
        structures=BRAIN_STRUCTURES, label_structures=BRAIN_LABEL_STRUCTURES,
        case_factory=_brain3d_factory, classes=BRAIN_CLASSES, parameters=BRAIN_PARAMETERS,
    ),
    "chest2d": SyntheticDataset(
        name="chest2d", version="1", ndim=2, shape=CHEST2D_SHAPE, spacing_mm=CHEST2D_SPACING,
        description=(
            "Posteroanterior chest X-ray-like images (uint8; column 0 = subject's right): lungs, heart, "
            "mediastinum, spine, ribs, clavicles, diaphragm, random pose; opacities by class: normal, "
            "pneumonia_like (consolidations), nodule (1-3 nodules). Label: opacities."),
        structures=CHEST_STRUCTURES, label_structures=CHEST_LABEL_STRUCTURES,
        case_factory=_chest2d_factory, classes=CHEST_CLASSES, coco_categories=CHEST_CATEGORIES,
        parameters=CHEST_PARAMETERS,
    ),
}


def synthesize(name: str, out: str | Path, n: int = 8, seed: int = 0, overwrite: bool = False,
               shape: tuple[int, ...] | None = None, quiet: bool = True) -> Path:
    """Generate the embedded dataset ``name`` into ``out`` and return ``out``.

    Args:
        name: a key of :data:`SYNTHETIC_DATASETS`.
        out: output folder; must not exist or be empty unless ``overwrite``.
        n: number of cases (at least 2: the last 20 %, at least one, form the test split).
        seed: the same ``(name, n, seed, shape)`` writes byte-identical files.
        overwrite: replace a non-empty ``out``.
        shape: image shape in voxels (default: the dataset's); the field of view is kept, so the
            spacing scales with it.

    Raises:
        MedsslInputError: unknown name, bad ``n`` / ``seed`` / ``shape``, or a non-empty ``out``.
    """
    if name not in SYNTHETIC_DATASETS:
        raise MedsslInputError(name, f"unknown synthetic dataset (choose from {', '.join(SYNTHETIC_DATASETS)})")
    return synthesize_dataset(SYNTHETIC_DATASETS[name], out, n=n, seed=seed, overwrite=overwrite, shape=shape,
                              quiet=quiet)
