"""The stain normalisations the feature bench still compares (bench/stain_normalisation.py)."""

from __future__ import annotations

import numpy as np
import pytest
from stain_normalisation import (
    estimate_stains,
    grey,
    lab_stats,
    macenko,
    masked_od,
    normalise_crops,
    reinhard,
)

from tests.test_features import disc_crops


def test_reinhard_maps_masked_lab_statistics_to_the_reference():
    crops, masks = disc_crops(n=1)
    reference = np.array([[40.0, 30.0, -20.0], [8.0, 5.0, 6.0]])
    out = reinhard(crops[0], masks[0], reference)
    np.testing.assert_allclose(lab_stats(out, masks[0]), reference, atol=1.5)
    np.testing.assert_array_equal(out[~masks[0]], crops[0][~masks[0]])


def two_stain_crops(n=4, size=48, seed=0):
    """Crops whose cell pixels follow the two-stain model exactly: OD = c1 v1 + c2 v2."""
    rng = np.random.default_rng(seed)
    stains = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    conc = rng.uniform(0, 1.5, (n, size, size, 2))
    od = conc @ stains
    crops = np.clip(256 * np.exp(-od) - 1, 0, 255).round().astype(np.uint8)
    masks = np.ones((n, size, size), bool)
    return crops, masks, stains


def test_macenko_finds_the_two_stains_and_keeps_a_crop_with_its_own_stains():
    crops, masks, stains = two_stain_crops()
    basis = estimate_stains(masked_od(crops, masks, np.random.default_rng(0)))
    assert np.abs(basis.vectors @ stains.T).max(axis=1).min() > 0.98  # cosine to a true stain
    out = macenko(crops[0], masks[0], basis, basis)
    assert np.abs(out.astype(int) - crops[0]).mean() < 2


def test_macenko_and_reinhard_bring_two_labs_closer():
    a, ma = disc_crops(n=6, seed=1)
    b, mb = disc_crops(n=6, seed=2, tint=(-40, 10, -30))
    crops, masks = np.concatenate([a, b]), np.concatenate([ma, mb])
    domains = np.repeat(["a", "b"], 6)

    def gap(x):
        return np.abs(x[:6][ma].mean(0) - x[6:][mb].mean(0)).sum()

    for method in ("reinhard", "macenko"):
        out, reference = normalise_crops(crops, masks, domains, method, [], 0)
        assert gap(out.astype(float)) < 0.5 * gap(crops.astype(float)), method
        assert reference
    out, _ = normalise_crops(crops, masks, domains, "grey", [], 0)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    np.testing.assert_array_equal(grey(crops[0]), out[0])
    with pytest.raises(ValueError, match="unknown stain"):
        normalise_crops(crops, masks, domains, "hsv", [], 0)
    with pytest.raises(ValueError, match="name none"):
        normalise_crops(crops, masks, domains, "reinhard", ["zz"], 0)
