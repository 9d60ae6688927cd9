"""Simulated training labs (a rejected option, kept with its bench): fixed optical-density stain
changes of the cell pixels."""

from __future__ import annotations

import numpy as np

from dorl.classify.run import training_set
from tests.helpers import bench_scripts_importable

with bench_scripts_importable():
    from training_labs import OD_SCALE, OD_SHIFT, TrainingLab, draw_training_labs, lab_domains


def _crops(n=4, side=16, seed=0):
    rng = np.random.default_rng(seed)
    crops = rng.integers(40, 230, (n, side, side, 3), dtype=np.uint8)
    masks = np.zeros((n, side, side), bool)
    masks[:, 4:12, 4:12] = True
    return crops, masks


def test_identity_lab_changes_nothing_and_background_is_kept():
    crops, masks = _crops()
    same = TrainingLab((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)).apply(crops, masks)
    assert np.abs(same.astype(int) - crops).max() <= 1  # rounding of the OD round trip
    darker = TrainingLab((1.2, 1.2, 1.2), (0.05, 0.05, 0.05)).apply(crops, masks)
    np.testing.assert_array_equal(darker[~masks], crops[~masks])
    assert (darker[masks].astype(int) <= crops[masks]).all()
    assert darker[masks].mean() < crops[masks].mean() - 5


def test_stain_change_acts_in_optical_density():
    # Scaling the OD by s maps intensity I to 256 (I+1/256)^s - 1: a dark pixel darkens by more.
    crops = np.array([[[[200, 200, 200], [60, 60, 60]]]], np.uint8)
    masks = np.ones((1, 1, 2), bool)
    out = TrainingLab((1.25, 1.25, 1.25), (0.0, 0.0, 0.0)).apply(crops, masks).astype(float)
    expected = 256 * ((crops + 1.0) / 256) ** 1.25 - 1
    np.testing.assert_allclose(out, np.round(expected), atol=1)


def test_labs_are_drawn_in_range_and_by_seed():
    labs = draw_training_labs(5, seed=3)
    assert labs == draw_training_labs(5, seed=3)
    assert labs != draw_training_labs(5, seed=4)
    for lab in labs:
        assert all(OD_SCALE[0] <= v <= OD_SCALE[1] for v in lab.od_scale)
        assert all(OD_SHIFT[0] <= v <= OD_SHIFT[1] for v in lab.od_shift)
    assert list(lab_domains(np.array(["a", "b"]), 2)) == ["a~lab2", "b~lab2"]


def test_training_set_appends_the_views_of_training_cells_that_have_them():
    X = np.arange(10, dtype=np.float32).reshape(5, 2)
    y = np.array(list("abcde"))
    views = np.full((2, 5, 2), np.nan, np.float32)
    views[0, [0, 1]] = 100 + X[[0, 1]]
    views[1, [1, 3]] = 200 + X[[1, 3]]
    X_train, y_train = training_set(X, y, np.array([1, 2, 3]), views)
    np.testing.assert_array_equal(X_train, np.concatenate([X[[1, 2, 3]], 100 + X[[1]],
                                                           200 + X[[1, 3]]]))
    assert list(y_train) == ["b", "c", "d", "b", "b", "d"]
    X_plain, y_plain = training_set(X, y, np.array([0, 4]))
    np.testing.assert_array_equal(X_plain, X[[0, 4]])
