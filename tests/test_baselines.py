"""Hand-crafted baselines: shapes, determinism, the invariances they claim, input checks."""

from __future__ import annotations

import numpy as np
import pytest

from baselines import (
    colour_texture_features,
    feature_names,
    pixel_pca_features,
    resize_images,
)


def _cells(n: int, side: int = 64, seed: int = 0) -> np.ndarray:
    """Random blobs on a pink background: (n, side, side, 3) uint8, each image different."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    out = np.empty((n, side, side, 3), dtype=np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * side
        r = rng.uniform(0.15, 0.35) * side
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        img = np.array([230, 200, 210]) + rng.normal(0, 8, (side, side, 3))
        img[inside] = rng.uniform(60, 160, 3) + rng.normal(0, 20, (inside.sum(), 3))
        out[i] = np.clip(img, 0, 255)
    return out


def test_colour_texture_shape_names_and_histograms_sum_to_one():
    imgs = _cells(5)
    feats = colour_texture_features(imgs, size=64, progress=False)
    names = feature_names()
    assert feats.shape == (5, len(names)) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    for prefix in ("hsv_h", "hsv_s", "hsv_v", "lbp_"):
        cols = [i for i, n in enumerate(names) if n.startswith(prefix)]
        np.testing.assert_allclose(feats[:, cols].sum(1), 1.0, atol=1e-5)


def test_colour_texture_is_deterministic_and_separates_different_images():
    imgs = _cells(4)
    a = colour_texture_features(imgs, size=64, progress=False)
    b = colour_texture_features(list(imgs), size=64, progress=False)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0], a[1])


@pytest.mark.parametrize("transform", [lambda x: np.rot90(x, 1), lambda x: np.rot90(x, 2),
                                       np.fliplr, np.flipud], ids=["rot90", "rot180", "lr", "ud"])
def test_colour_texture_invariant_to_right_angle_turns_and_flips(transform):
    imgs = _cells(3, side=48, seed=1)
    turned = np.stack([np.ascontiguousarray(transform(img)) for img in imgs])
    np.testing.assert_allclose(colour_texture_features(turned, size=48, progress=False),
                               colour_texture_features(imgs, size=48, progress=False),
                               rtol=1e-5, atol=1e-6)


def test_colour_texture_accepts_mixed_sizes():
    imgs = [_cells(1, side=40)[0], _cells(1, side=90, seed=3)[0][:, :70]]
    assert colour_texture_features(imgs, size=32, progress=False).shape == (2, len(feature_names()))


def test_pixel_pca_shape_determinism_and_seed_use():
    imgs = _cells(30)
    a = pixel_pca_features(imgs, n_components=5, seed=0, size=16)
    b = pixel_pca_features(imgs, n_components=5, seed=0, size=16)
    assert a.shape == (30, 5) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_pixel_pca_fit_mask_fits_on_the_selected_rows_only():
    imgs = _cells(30)
    source = np.arange(30) < 20
    feats = pixel_pca_features(imgs, n_components=4, seed=0, fit_mask=source, size=16)
    # Fitted on the source rows, the projection is centred on their mean, not on all rows'.
    np.testing.assert_allclose(feats[source].mean(0), 0.0, atol=1e-4)
    assert np.abs(feats.mean(0)).max() > 1e-3
    # Changing the held-out rows does not change the source rows' projection (inductive).
    other = imgs.copy()
    other[~source] = 255 - other[~source]
    again = pixel_pca_features(other, n_components=4, seed=0, fit_mask=source, size=16)
    np.testing.assert_allclose(again[source], feats[source], atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    imgs = _cells(6)
    with pytest.raises(ValueError, match="n_components"):
        pixel_pca_features(imgs, n_components=10, seed=0, size=8)
    with pytest.raises(ValueError, match="fit_mask"):
        pixel_pca_features(imgs, n_components=2, seed=0, fit_mask=np.ones(3, bool), size=8)
    with pytest.raises(ValueError, match="image 1"):
        resize_images([imgs[0], imgs[1].astype(np.float32)], 8)
    with pytest.raises(ValueError, match="no images"):
        colour_texture_features([], progress=False)


@pytest.mark.realdata
def test_real_images_of_three_labs_give_finite_features(shared_datasets):
    from dorl.data.images import read_rgb

    paths = [next((shared_datasets / "acevedo20-subset" / "PBC_dataset_normal_DIB" / "basophil")
                  .glob("*.jpg")),
             next((shared_datasets / "lisc-crops" / "basophil").glob("*.png")),
             shared_datasets / "zheng2018-cellavision" / "Dataset 2" / "001.bmp"]
    imgs = [read_rgb(p) for p in paths]
    assert len({img.shape for img in imgs}) == 3  # three sizes, one feature layout
    feats = colour_texture_features(imgs, progress=False)
    assert feats.shape == (3, len(feature_names())) and np.isfinite(feats).all()
    assert pixel_pca_features(imgs, n_components=2, seed=0).shape == (3, 2)
