import numpy as np
import pytest

from medssl.data.transforms import LeftAtriumAugment, center_crop, pad_to_patch, random_crop, random_rot_flip

SHAPE = (6, 5, 4)


def coords(shape=SHAPE):
    """An image whose value encodes its voxel coordinate: 10000 + 100*i + 10*j + k (all > 0)."""
    i, j, k = np.indices(shape)
    return (10000 + 100 * i + 10 * j + k).astype(np.float32)


def decode(v):
    v = int(v) - 10000
    return v // 100, (v // 10) % 10, v % 10


def label_of(image):
    return (image.astype(np.int64) % 7).astype(np.uint8)


def source_of(a, b, k, axis, h, w):
    """Input (i, j) of output voxel (a, b) after k counter-clockwise quarter turns in the (0, 1)
    plane followed by a flip along ``axis``, by index arithmetic."""
    r0, r1 = (h, w) if k % 2 == 0 else (w, h)
    a, b = (r0 - 1 - a, b) if axis == 0 else (a, r1 - 1 - b)
    return {0: (a, b), 1: (b, w - 1 - a), 2: (h - 1 - a, w - 1 - b), 3: (h - 1 - b, a)}[k]


def expected(img, k, axis):
    h, w, d = img.shape
    shape = (h, w, d) if k % 2 == 0 else (w, h, d)
    out = np.empty(shape, img.dtype)
    for a in range(shape[0]):
        for b in range(shape[1]):
            i, j = source_of(a, b, k, axis, h, w)
            out[a, b] = img[i, j]
    return out


def test_rot_flip_is_one_of_eight_and_keeps_alignment():
    img = coords()
    candidates = {(k, axis): expected(img, k, axis) for k in range(4) for axis in range(2)}
    seen = set()
    for s in range(60):
        out, lab = random_rot_flip(img, label_of(img), np.random.default_rng(s))
        match = [key for key, ref in candidates.items() if ref.shape == out.shape and np.array_equal(ref, out)]
        # rot90 by k then a flip is always a reflection of the square: the 8 (k, axis) pairs give
        # 4 distinct results, each reachable by two pairs
        assert len(match) == 2
        seen.add(tuple(match))
        np.testing.assert_array_equal(lab, label_of(out))
        assert out.flags.c_contiguous and out.flags.writeable
    assert len(seen) == 4


def test_rot_flip_reflections_roughly_uniform():
    img = coords((3, 2, 1))
    counts = {}
    for s in range(400):
        out, _ = random_rot_flip(img, None, np.random.default_rng(s))
        key = tuple(decode(v) for v in out.ravel())
        counts[key] = counts.get(key, 0) + 1
    # the 4 reflections of the plane: flip rows, flip columns, transpose, anti-transpose
    h, w = 3, 2
    refl = {
        tuple((h - 1 - a, b, 0) for a in range(h) for b in range(w)),
        tuple((a, w - 1 - b, 0) for a in range(h) for b in range(w)),
        tuple((b, a, 0) for a in range(w) for b in range(h)),
        tuple((h - 1 - b, w - 1 - a, 0) for a in range(w) for b in range(h)),
    }
    assert set(counts) == refl
    assert all(60 <= c <= 140 for c in counts.values())


def test_random_crop_bounds_and_alignment():
    img = coords((9, 8, 7))
    lab = label_of(img)
    starts = set()
    for s in range(200):
        out, ol = random_crop(img, lab, (4, 3, 5), np.random.default_rng(s))
        assert out.shape == (4, 3, 5)
        i0, j0, k0 = decode(out[0, 0, 0])
        assert 0 <= i0 <= 5 and 0 <= j0 <= 5 and 0 <= k0 <= 2
        np.testing.assert_array_equal(out, img[i0 : i0 + 4, j0 : j0 + 3, k0 : k0 + 5])
        np.testing.assert_array_equal(ol, lab[i0 : i0 + 4, j0 : j0 + 3, k0 : k0 + 5])
        starts.add((i0, j0, k0))
    # every valid offset, the last one included, is reachable
    assert {s[0] for s in starts} == set(range(6)) and {s[2] for s in starts} == {0, 1, 2}


def test_random_crop_pads_small_axes_like_reference():
    img = coords((6, 5, 4))
    padded, _, pads = pad_to_patch(img, None, (8, 5, 9))
    # (8-6)//2+3 = 4, axis equal to the patch is not padded, (9-4)//2+3 = 5
    assert pads == (4, 0, 5)
    assert padded.shape == (14, 5, 14)
    assert padded[:4].max() == 0 and padded[-4:].max() == 0 and padded[:, :, :5].max() == 0
    np.testing.assert_array_equal(padded[4:10, :, 5:9], img)
    for s in range(50):
        out, ol = random_crop(img, label_of(img), (8, 5, 9), np.random.default_rng(s))
        assert out.shape == (8, 5, 9)
        nz = out > 0
        # the padded region is zero in image and label alike, and real voxels stay aligned
        np.testing.assert_array_equal(ol[~nz], 0)
        np.testing.assert_array_equal(ol[nz], label_of(out[nz]))
        assert nz.sum() >= 6 * 5 * 4 - (14 - 8) * 5 * 9 - (14 - 9) * 8 * 5


def test_center_crop_exact():
    img = coords((9, 8, 7))
    out, ol = center_crop(img, label_of(img), (4, 3, 7))
    # offsets round((9-4)/2)=2 (2.5 rounds to even), round(5/2)=2, 0
    np.testing.assert_array_equal(out, img[2:6, 2:5, 0:7])
    np.testing.assert_array_equal(ol, label_of(img)[2:6, 2:5, 0:7])
    out2, _ = center_crop(img, None, (4, 4, 10))
    # z padded by (10-7)//2+3 = 4 -> 15, offset round(5/2)=2 -> original z starts at 2
    assert out2.shape == (4, 4, 10)
    assert decode(out2[0, 0, 2]) == (round(5 / 2), 2, 0)
    assert out2[:, :, :2].max() == 0


def test_left_atrium_augment_composition_and_read_only_inputs():
    img = coords((7, 7, 5))
    lab = label_of(img)
    img.flags.writeable = False
    lab.flags.writeable = False
    aug = LeftAtriumAugment((4, 4, 3))
    for s in range(30):
        out, ol = aug(img, lab, np.random.default_rng(s))
        ref = np.random.default_rng(s)
        r_img, r_lab = random_rot_flip(img, lab, ref)
        e_img, e_lab = random_crop(r_img, r_lab, (4, 4, 3), ref)
        np.testing.assert_array_equal(out, e_img)
        np.testing.assert_array_equal(ol, e_lab)
        np.testing.assert_array_equal(ol, label_of(out))
    # unlabeled samples pass label=None through
    out, none = LeftAtriumAugment((4, 4, 3), np.random.default_rng(0))(img, None)
    assert none is None and out.shape == (4, 4, 3)
    with pytest.raises(ValueError):
        random_crop(img, lab[:3], (2, 2, 2), np.random.default_rng(0))
