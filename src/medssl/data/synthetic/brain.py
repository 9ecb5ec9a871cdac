"""``brain2d`` / ``brain3d``: real brain anatomy from the MNI152 T1 template with tumour-like lesions.

The anatomy is nilearn's shipped ICBM152 2009 template (T1, brain mask, gray- and white-matter
probability maps), read from files inside the installed package: nothing is downloaded. Scalp,
skull and the CSF rim under it, which the skull-stripped template lacks, are added as layers at
fixed distances outside the brain.

Each sample draws a random affine (rotation, scale, shift) and a smooth elastic deformation of the
template, then inserts the lesions of its class, jitters the contrast (gamma), multiplies a smooth
bias field and adds Rician noise.

Classes (``BRAIN_CLASSES``; every block of four consecutive cases holds each class once):

* ``no_tumor``: anatomy only; empty label.
* ``glioma_like``: one intra-axial lesion in the deep white matter (sometimes a second, multifocal),
  12-24 mm radius, round, lobulated or infiltrative (irregular, finger-like margins), with a
  necrotic core, an enhancing rim and wide surrounding oedema.
* ``meningioma_like``: one extra-axial lesion on the brain surface under the skull, 10-20 mm,
  round or gently lobulated, homogeneously enhancing, little oedema.
* ``metastasis_like``: two to five small round lesions (3-8 mm) at the gray/white-matter junction,
  solid or ring-enhancing, with oedema out of proportion to their size.

Label: the tumour (necrotic core + enhancing rim) of all lesions. Structures (one id per voxel,
first match wins in the order tumor, edema, ventricles, white matter, gray matter, brain):
``brain`` is the rest of the brain mask (sulcal CSF, unclassified tissue); ventricles are the
large low-intensity CSF spaces deep inside the brain. Instances (2D): one mask per lesion,
the COCO category being the lesion's class.

Orientation: 3D volumes are RAS-ordered (axis 0 towards the subject's right, 1 anterior,
2 superior) with a diagonal affine; 2D images are radiological axial slices (row 0 anterior,
column 0 the subject's right).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from medssl.data.synthetic._common import (
    Shape,
    Spacing,
    bias_field,
    low_frequency_field,
    paint,
    random_rotation,
    rician_noise,
    to_uint8,
    unit,
)

BRAIN_CLASSES: tuple[str, ...] = ("no_tumor", "glioma_like", "meningioma_like", "metastasis_like")
BRAIN_LESION_CATEGORIES: tuple[str, ...] = ("glioma_like", "meningioma_like", "metastasis_like")
BRAIN_STRUCTURES: tuple[str, ...] = ("brain", "tumor", "edema", "ventricles", "white matter", "gray matter")
BRAIN_LABEL_STRUCTURES: tuple[str, ...] = ("tumor",)
BRAIN2D_SHAPE: tuple[int, int] = (128, 128)
BRAIN2D_SPACING: tuple[float, float] = (1.75, 1.75)
BRAIN3D_SHAPE: tuple[int, int, int] = (64, 64, 64)
BRAIN3D_SPACING: tuple[float, float, float] = (3.5, 3.5, 3.5)

BRAIN_PARAMETERS: dict[str, Any] = {
    "template": "nilearn MNI152 (ICBM 2009) T1 + brain mask + GM/WM probability maps, 1 mm",
    "affine": {"rotation_deg_3d": [10, 10, 10], "rotation_deg_2d_in_plane": 12, "tilt_deg_2d": 4,
               "scale": [0.9, 1.08], "shift_mm": 8},
    "elastic": {"control_points": 4, "amplitude_mm": [2, 5]},
    "axial_level_2d_mm": [-18, 28],
    "lesions": {
        "glioma_like": {"count": [1, 2], "radius_mm": [12, 24], "morphology": ["round", "lobulated", "infiltrative"],
                        "necrotic_core_fraction": [0.3, 0.7], "edema_factor": [1.4, 2.0]},
        "meningioma_like": {"count": 1, "radius_mm": [10, 20], "morphology": ["round", "lobulated"],
                            "necrotic_core_fraction": 0, "edema_factor": [1.0, 1.3]},
        "metastasis_like": {"count": [2, 5], "radius_mm": [3, 8], "morphology": ["round"],
                            "necrotic_core_fraction": [0.0, 0.5], "edema_factor": [1.6, 2.6]},
        "edema_intensity_factor": [0.6, 0.78],
    },
    "gamma": [0.8, 1.25],
    "bias_strength": [0.05, 0.2],
    "rician_sigma": [0.01, 0.035],
}


@dataclass(frozen=True)
class BrainAtlas:
    """The MNI152 template and maps derived from it.

    Attributes:
        t1: (X, Y, Z) float32 T1 template at 1 mm, ~0..1, zero outside the brain.
        t1_inv_affine: (4, 4) MNI mm -> ``t1`` voxel index.
        brain, gm, wm, ventricles: (X2, Y2, Z2) float32 maps at 2 mm (mask / probability / mask).
        outside_mm: (X2, Y2, Z2) float32 distance (mm) outside the brain hull (0 inside).
        depth_mm: (X2, Y2, Z2) float32 distance (mm) from the brain surface inside the brain (0 outside).
        inv_affine: (4, 4) MNI mm -> 2 mm voxel index.
        centre_mm: (3,) centroid of the brain mask (MNI mm).
    """

    t1: np.ndarray
    t1_inv_affine: np.ndarray
    brain: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    ventricles: np.ndarray
    outside_mm: np.ndarray
    depth_mm: np.ndarray
    inv_affine: np.ndarray
    centre_mm: np.ndarray


def _half_resolution(a: np.ndarray) -> np.ndarray:
    """2 x 2 x 2 block means of a 1 mm volume (odd trailing planes dropped)."""
    x, y, z = (s // 2 * 2 for s in a.shape)
    a = a[:x, :y, :z].astype(np.float32)
    return a.reshape(x // 2, 2, y // 2, 2, z // 2, 2).mean(axis=(1, 3, 5))


def load_brain_atlas() -> BrainAtlas:
    """Load the MNI152 template shipped with nilearn (offline) and derive the maps the generator uses."""
    from nilearn import datasets

    t1_img = datasets.load_mni152_template(resolution=1)
    t1 = np.asarray(t1_img.get_fdata(dtype=np.float32), dtype=np.float32)
    mask1 = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    gm1 = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32))
    wm1 = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32))
    affine1 = np.asarray(t1_img.affine, dtype=np.float64)

    affine2 = affine1 @ np.diag([2.0, 2.0, 2.0, 1.0])
    affine2[:3, 3] = affine1[:3, 3] + 0.5 * np.diag(affine1)[:3]
    brain = _half_resolution(mask1) >= 0.5
    gm, wm, t1_2 = _half_resolution(gm1), _half_resolution(wm1), _half_resolution(t1)

    hull = ndimage.binary_fill_holes(ndimage.binary_closing(brain, iterations=4, border_value=0))
    outside = ndimage.distance_transform_edt(~hull, sampling=2.0).astype(np.float32)
    depth = ndimage.distance_transform_edt(brain, sampling=2.0).astype(np.float32)
    # ventricles: large dark CSF spaces well inside the brain, near the midline
    csf = (t1_2 < 0.38) & (depth > 8.0)
    comps, n = ndimage.label(csf)
    sizes = ndimage.sum_labels(np.ones_like(t1_2), comps, index=np.arange(1, n + 1))
    centres = ndimage.center_of_mass(np.ones_like(t1_2), comps, index=np.arange(1, n + 1))
    keep = [i + 1 for i, (s, c) in enumerate(zip(sizes, centres, strict=True))
            if s >= 40 and abs(affine2[0, 0] * c[0] + affine2[0, 3]) < 30.0]
    ventricles = ndimage.binary_dilation(np.isin(comps, keep), iterations=1) & (t1_2 < 0.45) & brain

    idx = np.argwhere(brain).mean(axis=0)
    centre = affine2[:3, :3] @ idx + affine2[:3, 3]
    return BrainAtlas(
        t1=t1, t1_inv_affine=np.linalg.inv(affine1),
        brain=brain.astype(np.float32), gm=gm, wm=wm, ventricles=ventricles.astype(np.float32),
        outside_mm=outside, depth_mm=depth, inv_affine=np.linalg.inv(affine2), centre_mm=centre,
    )


def _sample(volume: np.ndarray, inv_affine: np.ndarray, points: np.ndarray, cval: float = 0.0) -> np.ndarray:
    """Trilinear samples of ``volume`` at MNI points (3, N)."""
    idx = inv_affine[:3, :3] @ points + inv_affine[:3, 3:4]
    return ndimage.map_coordinates(volume, idx, order=1, mode="constant", cval=cval, prefilter=False)


def _template_points(rng: np.random.Generator, atlas: BrainAtlas, shape: Shape, spacing: Spacing,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """MNI points (3, N) sampled by each output pixel/voxel, and the output's normal axis (3,).

    Output geometry: centred on the brain; 3D axes along MNI x, y, z; 2D rows anterior -> posterior,
    columns right -> left, at a random axial level.
    """
    ndim = len(shape)
    local = [(np.arange(s) - (s - 1) / 2.0) * sp for s, sp in zip(shape, spacing, strict=True)]
    mesh = np.meshgrid(*local, indexing="ij")
    if ndim == 3:
        plane = np.stack([m.ravel() for m in mesh])
        rot = random_rotation(rng, (10.0, 10.0, 10.0))
        offset = np.zeros(3)
    else:
        rows, cols = mesh
        plane = np.stack([-cols.ravel(), -rows.ravel(), np.zeros(rows.size)])
        rot = random_rotation(rng, (4.0, 4.0, 12.0))
        offset = np.array([0.0, 0.0, rng.uniform(-18.0, 28.0)])
    scale = rng.uniform(0.9, 1.08)
    shift = rng.uniform(-8.0, 8.0, 3) * np.array([1.0, 1.0, 1.0 if ndim == 3 else 0.0])
    amp = rng.uniform(2.0, 5.0)
    elastic = np.stack([amp * low_frequency_field(rng, shape, 4).ravel() for _ in range(3)])
    points = atlas.centre_mm[:, None] + offset[:, None] + shift[:, None] + (rot * scale) @ plane + elastic
    return points, rot[:, 2]


@dataclass
class _Lesion:
    kind: str
    centre: np.ndarray       # (3,) MNI mm
    radius: float            # mm
    core: float              # necrotic core as a fraction of the radius (0: solid)
    edema: float             # oedema outer radius as a multiple of the radius
    lobe_freq: np.ndarray    # (K, 3) directional frequencies
    lobe_amp: np.ndarray     # (K,)
    lobe_phase: np.ndarray   # (K,)
    infiltration: float      # amplitude of spatial (finger-like) margin irregularity
    wave: np.ndarray         # (K, 3) spatial frequencies (1/mm)
    wave_phase: np.ndarray   # (K,)
    enhancement: float       # intensity of the enhancing tumour
    necrosis: float          # intensity of the core

    def rho(self, points: np.ndarray) -> np.ndarray:
        """Normalised radius (N,) at MNI points (3, N): < core necrosis, < 1 tumour, < edema oedema."""
        v = points - self.centre[:, None]
        r = np.sqrt((v * v).sum(axis=0)) + 1e-6
        u = v / r
        rad = 1.0 + (self.lobe_amp[:, None] * np.cos(self.lobe_freq @ u + self.lobe_phase[:, None])).sum(axis=0)
        if self.infiltration > 0:
            rad += self.infiltration * np.cos(self.wave @ points + self.wave_phase[:, None]).mean(axis=0) * 2.0
        return r / (self.radius * np.clip(rad, 0.35, None))


def _draw_lesion(rng: np.random.Generator, kind: str, centre: np.ndarray, radius: float) -> _Lesion:
    if kind == "glioma_like":
        morph = ("round", "lobulated", "infiltrative")[int(rng.integers(3))]
        core, edema = rng.uniform(0.3, 0.7), rng.uniform(1.4, 2.0)
    elif kind == "meningioma_like":
        morph = ("round", "lobulated")[int(rng.integers(2))]
        core, edema = 0.0, rng.uniform(1.0, 1.3)
    else:
        morph = "round"
        core = rng.uniform(0.3, 0.5) if rng.random() < 0.5 else 0.0
        edema = rng.uniform(1.6, 2.6)
    k = 6
    lobe_amp = {"round": 0.04, "lobulated": 0.14, "infiltrative": 0.1}[morph] * rng.uniform(0.5, 1.0, k)
    if kind == "meningioma_like":
        lobe_amp *= 0.6
    wave_len = rng.uniform(8.0, 14.0, k)
    return _Lesion(
        kind=kind, centre=centre, radius=radius, core=float(core), edema=float(edema),
        lobe_freq=rng.normal(0, 1, (k, 3)) * rng.uniform(1.5, 3.5, (k, 1)),
        lobe_amp=lobe_amp, lobe_phase=rng.uniform(0, 2 * np.pi, k),
        infiltration=rng.uniform(0.2, 0.35) if morph == "infiltrative" else 0.0,
        wave=np.stack([unit(rng.normal(size=3)) * 2 * np.pi / w for w in wave_len]),
        wave_phase=rng.uniform(0, 2 * np.pi, k),
        enhancement=rng.uniform(1.0, 1.25), necrosis=rng.uniform(0.12, 0.3),
    )


def _place_lesions(rng: np.random.Generator, cls: str, points: np.ndarray, normal: np.ndarray,
                   maps: dict[str, np.ndarray], centre_mm: np.ndarray, planar: bool) -> list[_Lesion]:
    """Lesions of class ``cls`` centred on sampled output points that suit the class."""
    brain, gm, wm, depth = maps["brain"], maps["gm"], maps["wm"], maps["depth"]
    if cls == "no_tumor":
        return []
    if cls == "glioma_like":
        count = 1 + int(rng.random() < 0.2)
        radii = [rng.uniform(12, 24) for _ in range(count)]
    elif cls == "meningioma_like":
        count, radii = 1, [rng.uniform(10, 20)]
    else:
        count = int(rng.integers(2, 6))
        radii = [rng.uniform(3, 8) for _ in range(count)]
    lesions: list[_Lesion] = []
    for radius in radii:
        if cls == "glioma_like":
            ok = brain & (wm > 0.4) & (depth > max(8.0, 0.5 * radius))
        elif cls == "meningioma_like":
            ok = brain & (depth < 4.0)
        else:
            ok = brain & (gm > 0.25) & (gm < 0.75) & (depth > 5.0)
        if not ok.any():
            ok = brain & (depth > 3.0) if (brain & (depth > 3.0)).any() else brain
        candidates = np.flatnonzero(ok)
        for _ in range(30):
            centre = points[:, int(candidates[rng.integers(candidates.size)])].copy()
            if all(np.linalg.norm(centre - other.centre) > 1.4 * (radius + other.radius) for other in lesions):
                break
        if cls == "meningioma_like":  # push outwards: dural based, partly outside the brain
            outward = unit(centre - centre_mm)
            if planar:
                outward = unit(outward - normal * np.dot(outward, normal))
            centre = centre + outward * rng.uniform(0.15, 0.4) * radius
        elif planar:
            centre = centre + normal * rng.uniform(-0.3, 0.3) * radius
        lesions.append(_draw_lesion(rng, cls, centre, radius))
    return lesions


def _head_intensity(outside_mm: np.ndarray, thickness: float) -> np.ndarray:
    """Intensity of the layers outside the brain: CSF rim, skull tables and diploe, scalp fat, skin."""
    edges = np.array([2.0, 4.5, 8.0, 10.0, 15.0, 17.0]) * thickness
    values = np.array([0.12, 0.04, 0.35, 0.04, 0.75, 0.45, 0.0], dtype=np.float32)
    return values[np.searchsorted(edges, outside_mm)]


def generate_brain_case(rng: np.random.Generator, atlas: BrainAtlas, shape: Shape, spacing: Spacing,
                        cls: str) -> dict[str, Any]:
    """One deformed-template image (2D axial slice or 3D volume) of class ``cls``.

    Args:
        rng: the case's random generator.
        atlas: from :func:`load_brain_atlas`.
        shape: (H, W) for a slice or (H, W, D) for a volume, in pixels / voxels.
        spacing: pixel / voxel size (mm).
        cls: one of :data:`BRAIN_CLASSES`.

    Returns:
        ``image`` float32 (T1-like intensities, white matter ~0.8; 2D callers convert to uint8),
        ``label`` uint8 tumour mask, ``structures`` uint8 ids of :data:`BRAIN_STRUCTURES`,
        ``class``, ``instances`` (list of (category, bool mask)), ``meta``.
    """
    if cls not in BRAIN_CLASSES:
        raise ValueError(f"unknown brain class {cls!r}")
    shape = tuple(int(s) for s in shape)
    points, normal = _template_points(rng, atlas, shape, spacing)
    t1 = _sample(atlas.t1, atlas.t1_inv_affine, points)
    maps = {
        "brain": _sample(atlas.brain, atlas.inv_affine, points) >= 0.5,
        "gm": _sample(atlas.gm, atlas.inv_affine, points),
        "wm": _sample(atlas.wm, atlas.inv_affine, points),
        "depth": _sample(atlas.depth_mm, atlas.inv_affine, points),
    }
    ventricles = (_sample(atlas.ventricles, atlas.inv_affine, points) >= 0.5) & maps["brain"]
    outside = _sample(atlas.outside_mm, atlas.inv_affine, points, cval=1e3)
    thickness = rng.uniform(0.8, 1.25)
    img = np.where(outside > 0.5, _head_intensity(outside, thickness), t1).astype(np.float32)
    intracranial = outside <= 2.0 * thickness

    lesions = _place_lesions(rng, cls, points, normal, maps, atlas.centre_mm, planar=len(shape) == 2)
    n = points.shape[1]
    tumour_owner = np.full(n, -1)
    best = np.full(n, np.inf)
    edema = np.zeros(n, bool)
    for k, les in enumerate(lesions):
        rho = les.rho(points)
        inside = (rho < 1.0) & intracranial & (rho < best)
        tumour_owner[inside] = k
        best = np.where(inside, rho, best)
        reach = 1.0 + (les.edema - 1.0) * (0.4 + 0.6 * np.clip(maps["wm"] / 0.6, 0, 1))
        edema |= (rho < reach) & maps["brain"] & (rho >= 1.0)
        img = np.where(inside, np.where(rho < les.core, les.necrosis, les.enhancement), img)
    tumour = tumour_owner >= 0
    edema &= ~tumour
    img = np.where(edema, img * rng.uniform(0.6, 0.78), img).astype(np.float32)

    img = img.reshape(shape)
    img = ndimage.gaussian_filter(img, 0.5)
    gamma = rng.uniform(0.8, 1.25)
    img = np.power(np.clip(img, 0, None), np.float32(gamma))
    img *= bias_field(rng, shape, rng.uniform(0.05, 0.2))
    img = rician_noise(rng, img.astype(np.float32), rng.uniform(0.01, 0.035))

    sid = {name: i + 1 for i, name in enumerate(BRAIN_STRUCTURES)}
    structures = np.zeros(n, np.uint8)
    brain = maps["brain"]
    csf_like = 1.0 - maps["gm"] - maps["wm"]
    paint(structures, tumour, sid["tumor"])
    paint(structures, edema, sid["edema"])
    paint(structures, ventricles, sid["ventricles"])
    paint(structures, brain & (maps["wm"] >= maps["gm"]) & (maps["wm"] >= csf_like), sid["white matter"])
    paint(structures, brain & (maps["gm"] > maps["wm"]) & (maps["gm"] >= csf_like), sid["gray matter"])
    paint(structures, brain, sid["brain"])
    volume = structures.reshape(shape)
    label = (volume == sid["tumor"]).astype(np.uint8)
    instances = [(les.kind, (tumour_owner == k).reshape(shape)) for k, les in enumerate(lesions)]
    meta = {"lesions": [{"kind": les.kind, "radius_mm": round(les.radius, 2),
                         "centre_mni_mm": [round(float(c), 1) for c in les.centre]} for les in lesions],
            "gamma": round(float(gamma), 3)}
    return {"image": img.astype(np.float32), "label": label, "structures": volume, "class": cls,
            "instances": instances, "meta": meta}


def brain_image_to_uint8(image: np.ndarray) -> np.ndarray:
    """Window a brain slice to uint8: 0 -> 0, the 99.5th percentile x 1.05 -> 255."""
    return to_uint8(image, 0.0, float(np.percentile(image, 99.5)) * 1.05)


def generate_brain2d_case(rng: np.random.Generator, atlas: BrainAtlas, cls: str,
                          shape: Shape = BRAIN2D_SHAPE, spacing: Spacing | None = None) -> dict[str, Any]:
    """One axial slice (H, W) as uint8 with label, structures, class and lesion instances."""
    spacing = spacing or tuple(sp * s0 / s for sp, s0, s in zip(BRAIN2D_SPACING, BRAIN2D_SHAPE, shape, strict=True))
    case = generate_brain_case(rng, atlas, shape, spacing, cls)
    case["image"] = brain_image_to_uint8(case["image"])
    return case


def generate_brain3d_case(rng: np.random.Generator, atlas: BrainAtlas, cls: str,
                          shape: Shape = BRAIN3D_SHAPE, spacing: Spacing | None = None) -> dict[str, Any]:
    """One volume (H, W, D) float32 with label, structures and class (no COCO instances in 3D)."""
    spacing = spacing or tuple(sp * s0 / s for sp, s0, s in zip(BRAIN3D_SPACING, BRAIN3D_SHAPE, shape, strict=True))
    case = generate_brain_case(rng, atlas, shape, spacing, cls)
    case.pop("instances")
    return case
