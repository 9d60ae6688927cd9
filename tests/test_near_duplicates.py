"""Near-duplicate grouping by perceptual hash."""

import numpy as np
from PIL import Image

from dorl.data.near_duplicates import dhash, group_near_duplicates
from dorl.data.readers import read_source


def _scene(seed, size=96):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size, 3))
    for _ in range(6):
        cy, cx, r = rng.uniform(10, size - 10, 2).tolist() + [rng.uniform(6, 20)]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return img.astype(np.uint8)


def test_shifted_crops_share_a_group(tmp_path):
    a, b = _scene(1), _scene(2)
    (tmp_path / "neutrophil").mkdir()
    crops = {"a0": a[:80, :80], "a1": a[2:82, 1:81], "b0": b[:80, :80]}
    for name, crop in crops.items():
        Image.fromarray(crop).save(tmp_path / "neutrophil" / f"{name}.png")
    rows = read_source({"format": "class_folders", "path": str(tmp_path), "group_by": "dhash"})
    groups = dict(zip(rows["path"].map(lambda p: p.split("/")[-1][:2]), rows["group"]))
    assert groups["a0"] == groups["a1"] != groups["b0"]


def test_dhash_is_64_bits_and_brightness_invariant():
    img = _scene(3)
    h = dhash(img)
    assert h.shape == (64,) and h.dtype == bool
    brighter = np.clip(img.astype(int) + 20, 0, 255).astype(np.uint8)
    assert (dhash(brighter) != h).sum() <= 4


def test_distinct_images_stay_apart(tmp_path):
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(_scene(10 + i)).save(paths[-1])
    assert len(set(group_near_duplicates(paths))) == 4
