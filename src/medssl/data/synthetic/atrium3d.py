"""``atrium3d``: left-atrium-like late-gadolinium MRI phantoms with labels and named structures.

Each case is built in an anatomical frame (mm; +x patient left, +y posterior, +z superior, origin at
the atrial centre) and placed in the volume with a random rotation and shift. Array axes follow the
same directions: axis 0 = x, axis 1 = y (posterior towards higher indices), axis 2 = z.

Anatomy of a case:

* atrial body: a randomly rotated ellipsoid, sometimes merged with a second bulge, whose surface is
  perturbed by a smooth random field;
* four pulmonary veins (left/right, superior/inferior): curved tapering tubes that leave the
  posterior-lateral wall; their first few millimetres outside the body (the ostia) belong to the
  atrium label, as in the left-atrium benchmark; the rest is the ``pulmonary veins`` structure;
* the left atrial appendage, anterior-left-superior: a tapering finger, a sharply bent
  ("chicken wing") tube or a lobe on a short neck;
* bright neighbours of overlapping intensity that touch or nearly touch the atrium: the aorta
  (ascending, arch, descending behind the atrium), the left ventricle (through the mitral plane),
  the right atrium (across the septum), the pulmonary artery over the roof; plus the spine, lungs,
  mediastinal fat and dark myocardium and vessel walls with patchy wall enhancement.

Image formation: partial-volume blur, random contrast (gamma), smooth multiplicative bias field,
Rician noise (magnitude of complex Gaussian noise), then z-scoring over the volume as the
preprocessed benchmark data are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from medssl.data.synthetic._common import (
    Shape,
    Spacing,
    bezier,
    bias_field,
    chaikin,
    ellipsoid_radius,
    ellipsoid_surface_distance,
    grid_mm,
    low_frequency_field,
    paint,
    random_rotation,
    rician_noise,
    tube_level,
    unit,
    zscore,
)

ATRIUM3D_SHAPE: tuple[int, int, int] = (96, 96, 64)
ATRIUM3D_SPACING: tuple[float, float, float] = (1.25, 1.25, 1.25)
ATRIUM3D_STRUCTURES: tuple[str, ...] = (
    "left atrium",            # 1: body + vein ostia (label)
    "pulmonary veins",        # 2: the veins beyond the ostia
    "left atrial appendage",  # 3: (label)
    "aorta",                  # 4
    "left ventricle",         # 5: blood pool
    "right atrium",           # 6
    "pulmonary artery",       # 7
    "spine",                  # 8
)
ATRIUM3D_LABEL_STRUCTURES: tuple[str, ...] = ("left atrium", "left atrial appendage")
LAA_KINDS: tuple[str, ...] = ("finger", "chicken_wing", "lobe")

#: Ranges the generator draws from (recorded in dataset.json).
ATRIUM3D_PARAMETERS: dict[str, Any] = {
    "body_semi_axes_mm": {"lr": [26, 34], "ap": [16, 23], "si": [16, 22]},
    "body_size_scale": {"log_normal_sigma": 0.13, "clip": [0.78, 1.25]},
    "body_surface_perturbation": [0.06, 0.16],
    "bulge_probability": 0.7,
    "veins": {"count": 4, "length_mm": [26, 40], "radius_mm": [5.0, 7.5], "ostium_label_mm": [3, 8]},
    "appendage_kinds": list(LAA_KINDS),
    "neighbour_gap_mm": {"aorta": [-1, 3], "left ventricle": [0.5, 3], "right atrium": [1, 4],
                         "pulmonary artery": [0, 3]},
    "blood_intensity_ratio_of_neighbours": [0.88, 1.15],
    "pose": {"rotation_deg": [8, 8, 12], "shift_mm": [8, 8, 5]},
    "partial_volume_sigma_vox": [0.5, 0.9],
    "gamma": [0.75, 1.35],
    "bias_strength": [0.1, 0.3],
    "rician_sigma": [0.06, 0.13],
}


def _structure_id(name: str) -> int:
    return ATRIUM3D_STRUCTURES.index(name) + 1


def generate_atrium3d_case(rng: np.random.Generator, shape: Shape = ATRIUM3D_SHAPE,
                           spacing: Spacing | None = None) -> dict[str, Any]:
    """One left-atrium-like MRI volume with its label and structure map.

    Args:
        rng: the case's random generator (everything is drawn from it).
        shape: volume shape (H, W, D) in voxels.
        spacing: voxel size (mm); by default the 120 x 120 x 80 mm field of view of the default
            96 x 96 x 64 grid at 1.25 mm is kept.

    Returns:
        ``image`` float32 (H, W, D) z-scored; ``label`` uint8 (H, W, D) left atrium (body, vein ostia,
        appendage); ``structures`` uint8 (H, W, D) ids of :data:`ATRIUM3D_STRUCTURES` (1-based);
        ``meta`` dict of drawn parameters.
    """
    shape = tuple(int(s) for s in shape)
    if spacing is None:
        spacing = tuple(sp * s0 / s for sp, s0, s in zip(ATRIUM3D_SPACING, ATRIUM3D_SHAPE, shape, strict=True))
    sp = np.asarray(spacing, dtype=np.float64)

    # ---- pose: anatomical frame -> voxel mm --------------------------------------------------
    pose = random_rotation(rng, (8.0, 8.0, 12.0))
    centre = (np.asarray(shape) - 1) * sp / 2 + rng.uniform(-1, 1, 3) * np.array([8.0, 8.0, 5.0])

    def to_vox(points: np.ndarray) -> np.ndarray:
        return np.asarray(points) @ pose.T + centre

    grid = grid_mm(shape, spacing)
    rel = [g - np.float32(c) for g, c in zip(grid, centre, strict=True)]
    anat = [sum(np.float32(pose[i, k]) * rel[i] for i in range(3)) for k in range(3)]
    del rel

    def tube(control: np.ndarray, n: int = 20, smooth: bool = False) -> np.ndarray:
        """Inside-mask of a tube; ``control`` rows are (x, y, z, radius) in the anatomical frame."""
        path = chaikin(control, 3) if smooth else bezier(control, n)
        return tube_level(shape, spacing, to_vox(path[:, :3]), path[:, 3]) < 0

    # ---- atrial body ---------------------------------------------------------------------------
    size = float(np.clip(np.exp(rng.normal(0.0, 0.13)), 0.78, 1.25))
    axes = size * np.array([rng.uniform(26, 34), rng.uniform(16, 23), rng.uniform(16, 22)])
    body_rot = random_rotation(rng, (12.0, 12.0, 15.0))
    perturb = rng.uniform(0.06, 0.16) * low_frequency_field(rng, shape, (5, 5, 4))
    body = ellipsoid_radius(anat, (0, 0, 0), axes, body_rot) < 1 + perturb
    has_bulge = bool(rng.random() < 0.7)
    if has_bulge:
        u = unit(rng.normal(size=3))
        off = u * ellipsoid_surface_distance(u, axes, body_rot) * rng.uniform(0.35, 0.55)
        b_axes = axes * rng.uniform(0.45, 0.65, 3)
        body |= ellipsoid_radius(anat, off, b_axes, body_rot) < 1 + perturb

    def surface(direction: Sequence[float] | np.ndarray) -> np.ndarray:
        d = unit(direction)
        return d * ellipsoid_surface_distance(d, axes, body_rot)

    # ---- pulmonary veins -----------------------------------------------------------------------
    veins = np.zeros(shape, bool)
    vein_meta = []
    for side in (1.0, -1.0):            # +1 left veins, -1 right veins
        for level in (1.0, -1.0):       # +1 superior, -1 inferior
            ostium = surface((side, rng.uniform(0.45, 0.8), level * rng.uniform(0.65, 0.9)))
            start = ostium * 0.55
            out_dir = unit((side, rng.uniform(0.3, 0.9), level * rng.uniform(0.45, 0.9)))
            length = rng.uniform(26, 40)
            bend = rng.normal(size=3)
            bend -= out_dir * np.dot(bend, out_dir)
            bend = unit(bend) * rng.uniform(0.0, 0.25) * length
            r0 = rng.uniform(5.0, 7.5)
            r1 = r0 * rng.uniform(0.6, 0.8)
            ctrl = np.array([
                [*start, r0 * 1.05],
                [*(ostium + out_dir * length * 0.35), r0],
                [*(ostium + out_dir * length * 0.7 + bend), 0.5 * (r0 + r1)],
                [*(ostium + out_dir * length + 0.5 * bend), r1],
            ])
            veins |= tube(ctrl, n=24)
            vein_meta.append({"length_mm": round(float(length), 2), "radius_mm": round(float(r0), 2)})

    ostium_mm = rng.uniform(3.0, 8.0)
    dist_body = ndimage.distance_transform_edt(~body, sampling=spacing)
    proximal = veins & ~body & (dist_body <= ostium_mm)
    distal = veins & ~body & ~proximal

    # ---- left atrial appendage -----------------------------------------------------------------
    laa_kind = LAA_KINDS[int(rng.integers(len(LAA_KINDS)))]
    base_dir = unit(np.array([0.75, -0.65, 0.45]) + rng.normal(0, 0.12, 3))
    base = surface(base_dir) * 0.8
    laa_dir = unit(base_dir + np.array([0.1, -0.3, 0.25]) + rng.normal(0, 0.25, 3))
    side_dir = rng.normal(size=3)
    side_dir = unit(side_dir - laa_dir * np.dot(side_dir, laa_dir))
    if laa_kind == "finger":
        length = rng.uniform(22, 34)
        r0, r1 = rng.uniform(6.0, 8.5), rng.uniform(3.0, 4.5)
        ctrl = np.array([
            [*base, r0],
            [*(base + laa_dir * length * 0.45 + side_dir * rng.uniform(-0.2, 0.2) * length), r0 * 0.9],
            [*(base + laa_dir * length * 0.8 + side_dir * rng.uniform(-0.25, 0.25) * length), 0.5 * (r0 + r1)],
            [*(base + laa_dir * length), r1],
        ])
        laa = tube(ctrl, n=24)
    elif laa_kind == "chicken_wing":
        first, second = rng.uniform(14, 20), rng.uniform(12, 20)
        r0, r1 = rng.uniform(6.0, 8.0), rng.uniform(3.0, 4.5)
        elbow = base + laa_dir * first
        ctrl = np.array([
            [*base, r0],
            [*elbow, 0.5 * (r0 + r1) + 1.0],
            [*(elbow + unit(side_dir - 0.3 * laa_dir) * second), r1],
        ])
        laa = tube(ctrl, smooth=True)
    else:  # lobe on a short neck
        neck = rng.uniform(6, 10)
        r_neck = rng.uniform(4.5, 6.0)
        lobe_axes = rng.uniform(7, 12, 3)
        lobe_centre = base + laa_dir * (neck + 0.8 * lobe_axes.max())
        ctrl = np.array([[*base, r_neck], [*(base + laa_dir * (neck + 2)), r_neck]])
        lobe_field = 0.15 * low_frequency_field(rng, shape, (9, 9, 6))
        laa = tube(ctrl, n=4) | (ellipsoid_radius(anat, lobe_centre, lobe_axes, random_rotation(rng, (40,) * 3))
                                 < 1 + lobe_field)
    laa &= ~body

    # ---- neighbours ----------------------------------------------------------------------------
    gap = {k: rng.uniform(*v) for k, v in ATRIUM3D_PARAMETERS["neighbour_gap_mm"].items()}
    # aorta: ascending in front of the atrium, arch above, descending behind it
    r_asc, r_desc = rng.uniform(11, 14), rng.uniform(8.5, 11)
    x_desc = rng.uniform(0, 14)
    y_desc = surface((x_desc / axes[0], 1.0, 0.0))[1] + r_desc + gap["aorta"]
    y_asc = surface((0.0, -1.0, 0.3))[1] - r_asc - rng.uniform(0, 4)
    aorta_ctrl = np.array([
        [rng.uniform(-12, -4), y_asc - 4, -axes[2] - 30, r_asc],
        [rng.uniform(-8, 0), y_asc, axes[2] * 0.6, r_asc],
        [x_desc * 0.5, 0.5 * (y_asc + y_desc), axes[2] + 30, 0.5 * (r_asc + r_desc)],
        [x_desc, y_desc + 3, axes[2] * 0.6, r_desc],
        [x_desc, y_desc, -axes[2] - 70, r_desc],
    ])
    aorta = tube(aorta_ctrl, smooth=True)

    # pulmonary artery: trunk left-anterior, right branch across the atrial roof
    r_pa, r_branch = rng.uniform(10, 13), rng.uniform(7, 9.5)
    z_roof = surface((0.0, 0.0, 1.0))[2] + r_branch + gap["pulmonary artery"]
    bif = np.array([rng.uniform(5, 15), -axes[1] * 0.6, z_roof + 2])
    pa = tube(np.array([
        [rng.uniform(14, 22), -axes[1] - 30, -axes[2] * 0.3, r_pa],
        [*(bif + np.array([3, -6, -2])), r_pa],
        [*bif, r_branch * 1.1],
    ]), smooth=True)
    pa |= tube(np.array([
        [*bif, r_branch],
        [0.0, rng.uniform(-5, 5), z_roof, r_branch],
        [-axes[0] - 40, rng.uniform(-5, 10), z_roof - rng.uniform(0, 6), r_branch * 0.9],
    ]), smooth=True)
    pa |= tube(np.array([
        [*bif, r_branch],
        [axes[0] * 0.7, rng.uniform(0, 10), z_roof + 4, r_branch],
        [axes[0] + 30, rng.uniform(10, 20), z_roof + rng.uniform(0, 8), r_branch * 0.9],
    ]), smooth=True)

    def touching_ellipsoid(direction: np.ndarray, semi: np.ndarray, gap_mm: float) -> np.ndarray:
        """Normalised radius of an ellipsoid placed ``gap_mm`` from the body along ``direction``."""
        rot = random_rotation(rng, (15.0, 15.0, 15.0))
        u = unit(direction)
        dist = ellipsoid_surface_distance(u, axes, body_rot) + ellipsoid_surface_distance(-u, semi, rot) + gap_mm
        return ellipsoid_radius(anat, u * dist, semi, rot)

    lv_rho = touching_ellipsoid(np.array([0.55, -0.7, -0.55]) + rng.normal(0, 0.12, 3),
                              rng.uniform([20, 17, 20], [26, 22, 26]), gap["left ventricle"])
    lv = lv_rho < 1
    myo_thick = rng.uniform(0.25, 0.4)
    myocardium = (lv_rho < 1 + myo_thick) & ~lv & (dist_body > 3.0)
    ra = touching_ellipsoid(np.array([-0.85, -0.5, 0.1]) + rng.normal(0, 0.12, 3),
                            rng.uniform([20, 17, 20], [26, 22, 27]), gap["right atrium"]) < 1

    spine_r = rng.uniform(13, 17)
    spine_y = surface((0.0, 1.0, 0.0))[1] + rng.uniform(30, 38)
    spine_x = rng.uniform(-5, 5)
    spine = tube(np.array([[spine_x, spine_y, -200, spine_r], [spine_x, spine_y, 200, spine_r]]), n=2)

    # ---- structures and label ------------------------------------------------------------------
    structures = np.zeros(shape, np.uint8)
    paint(structures, body | proximal, _structure_id("left atrium"))
    paint(structures, laa, _structure_id("left atrial appendage"))
    paint(structures, distal, _structure_id("pulmonary veins"))
    paint(structures, lv, _structure_id("left ventricle"))
    paint(structures, ra, _structure_id("right atrium"))
    paint(structures, aorta, _structure_id("aorta"))
    paint(structures, pa, _structure_id("pulmonary artery"))
    paint(structures, spine, _structure_id("spine"))
    label = np.isin(structures, [_structure_id(s) for s in ATRIUM3D_LABEL_STRUCTURES]).astype(np.uint8)

    # ---- intensities ---------------------------------------------------------------------------
    img = np.full(shape, rng.uniform(0.28, 0.42), np.float32)
    img += np.float32(0.06) * low_frequency_field(rng, shape, (12, 12, 8))
    img += np.float32(rng.uniform(0.05, 0.1)) * ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), 1.0) * np.float32(3.0)
    fat = low_frequency_field(rng, shape, (10, 10, 7)) > rng.uniform(0.5, 1.0)
    fat |= low_frequency_field(rng, shape, (20, 20, 13)) > rng.uniform(0.9, 1.4)
    img[fat] = rng.uniform(0.55, 0.8)
    lung_edge = axes[0] + rng.uniform(14, 24) + 8.0 * low_frequency_field(rng, shape, (4, 4, 3))
    lungs = (np.abs(anat[0]) > lung_edge) & (structures == 0)
    img[lungs] = rng.uniform(0.05, 0.12)
    img[structures == _structure_id("spine")] = rng.uniform(0.3, 0.5)
    img[myocardium & (structures == 0)] = rng.uniform(0.15, 0.25)

    blood = (structures > 0) & (structures != _structure_id("spine"))
    wall = ndimage.binary_dilation(blood, iterations=1) & ~blood
    img[wall] = rng.uniform(0.12, 0.25)
    blood_field = 1.0 + rng.uniform(0.04, 0.1) * low_frequency_field(rng, shape, (6, 6, 4))
    ratio = {sid: 1.0 for sid in range(1, len(ATRIUM3D_STRUCTURES) + 1)}
    ratio[_structure_id("pulmonary veins")] = rng.uniform(0.9, 1.1)
    ratio[_structure_id("left atrial appendage")] = rng.uniform(0.85, 1.05)
    for name in ("aorta", "left ventricle", "right atrium", "pulmonary artery"):
        ratio[_structure_id(name)] = rng.uniform(0.88, 1.15)
    for sid, r in ratio.items():
        if sid == _structure_id("spine"):
            continue
        sel = structures == sid
        img[sel] = (r * blood_field[sel]).astype(np.float32)
    # patchy late enhancement of the atrial wall
    near_la = wall & (dist_body <= 2.0 * float(sp.max()))
    enhanced = near_la & (low_frequency_field(rng, shape, (8, 8, 6)) > rng.uniform(0.3, 0.9))
    img[enhanced] = rng.uniform(1.0, 1.25)

    # ---- image formation -----------------------------------------------------------------------
    pv_sigma = rng.uniform(0.5, 0.9)
    img = ndimage.gaussian_filter(img, pv_sigma)
    gamma = rng.uniform(0.75, 1.35)
    img = np.power(np.clip(img, 0, None), np.float32(gamma))
    img *= bias_field(rng, shape, rng.uniform(0.1, 0.3))
    noise_sigma = rng.uniform(0.06, 0.13)
    img = rician_noise(rng, img.astype(np.float32), noise_sigma)
    image = zscore(img)

    meta = {
        "body_semi_axes_mm": [round(float(a), 2) for a in axes],
        "bulge": has_bulge,
        "veins": vein_meta,
        "ostium_label_mm": round(float(ostium_mm), 2),
        "appendage": laa_kind,
        "gaps_mm": {k: round(float(v), 2) for k, v in gap.items()},
        "partial_volume_sigma_vox": round(float(pv_sigma), 3),
        "gamma": round(float(gamma), 3),
        "rician_sigma": round(float(noise_sigma), 3),
    }
    return {"image": image, "label": label, "structures": structures, "meta": meta}
