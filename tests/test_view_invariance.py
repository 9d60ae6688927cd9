"""The view-invariant projection and the test-time views of the cell encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dorl.features.efficientnet import build_efficientnet_lite
from dorl.features.encode import dihedral_views, domain_sample, encode_crops
from tests.test_features import disc_crops

from view_invariance import ViewInvariantProjection, two_views

AUGMENT = dict(hue=0.08, saturation=0.25, brightness=0.15, blur_prob=0.3, scale=(0.8, 1.25),
               flip=True)


def test_projection_removes_the_axis_views_differ_along_and_keeps_the_rest():
    rng = np.random.default_rng(0)
    n, d = 400, 6
    nuisance = np.zeros(d)
    nuisance[[1, 2]] = 1 / np.sqrt(2)
    X = rng.normal(size=(n, d))
    # Views of a cell differ mostly along `nuisance`, a little everywhere.
    diffs = rng.normal(size=(n, 1)) * 5 * nuisance + 0.1 * rng.normal(size=(n, d))
    proj = ViewInvariantProjection(variance=0.5).fit(diffs)
    assert proj.components_.shape == (1, d)
    assert abs(abs(proj.components_[0] @ nuisance) - 1) < 1e-2
    out = proj.transform(X)
    assert np.abs(out @ nuisance).max() < 0.05
    # What is orthogonal to the nuisance axis is untouched.
    other = np.eye(d)[0]
    np.testing.assert_allclose(out @ other, X @ other, atol=0.05)


def test_more_variance_removes_more_axes_and_max_components_caps_them():
    rng = np.random.default_rng(1)
    diffs = rng.normal(size=(200, 10)) * np.linspace(3, 1, 10)
    counts = [len(ViewInvariantProjection(variance=v).fit(diffs).components_)
              for v in (0.2, 0.5, 0.9)]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert len(ViewInvariantProjection(variance=0.9, max_components=2).fit(diffs)
               .components_) == 2
    with pytest.raises(ValueError, match="variance"):
        ViewInvariantProjection(variance=1.0).fit(diffs)


def test_two_views_differ_from_each_other_and_repeat_with_the_seed():
    crops, masks = disc_crops(n=5, size=32)
    a, b = two_views(crops, masks, AUGMENT, seed=3)
    assert a.shape == crops.shape and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1
    a2, b2 = two_views(crops, masks, AUGMENT, seed=3)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)


def test_domain_sample_spreads_over_each_domain():
    domains = np.array(["a"] * 10 + ["b"] * 3)
    rows = domain_sample(domains, 4)
    assert list(rows[:4]) == [0, 3, 6, 9] and list(rows[4:]) == [10, 11, 12]


def test_dihedral_views_are_the_eight_symmetries():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    views = dihedral_views(x, 8)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert torch.equal(views[0], x)
    assert len(dihedral_views(x, 4)) == 4


def test_averaged_views_make_features_rotation_invariant():
    model = build_efficientnet_lite("efficientnet_lite0")  # ImageNet weights
    crops, _ = disc_crops(n=4, size=32, seed=2)
    crops[:, :8] = 0  # an orientation the plain features can see
    turned = np.ascontiguousarray(np.rot90(crops, 1, axes=(1, 2)))
    domains = np.repeat(["a"], 4)
    plain = [encode_crops(model, 32, c, domains, 0, 4, False) for c in (crops, turned)]
    averaged = [encode_crops(model, 32, c, domains, 0, 4, False, tta=4) for c in (crops, turned)]
    assert np.abs(plain[0] - plain[1]).max() > 1e-3
    np.testing.assert_allclose(averaged[0], averaged[1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="tta"):
        encode_crops(model, 32, crops, domains, 0, 4, False, tta=3)
