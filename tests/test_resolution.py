"""features.resolution: every lab seen at the coarsest lab's resolution."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import ndimage as ndi

from dorl.pipeline.apply import SourceRun, applied_config
from dorl.config import ConfigError
from dorl.features.crops import cell_crop
from dorl.features.encode import FeatureSettings, stream_cell_features
from dorl.features.resolution import (
    coarsest_side,
    native_crop_sides,
    parse_resolution,
    resample_through,
)
from dorl.sam.segmentation import Segmentation
from simulated_labs import LOW_RES_LAB, shifted_crops
from tests.helpers import write_disc_manifest


def checkerboard(n=3, size=32):
    """(n, size, size, 3) uint8 crops of a one-pixel checkerboard: all detail, no shape."""
    board = ((np.indices((size, size)).sum(0) % 2) * 200 + 20).astype(np.uint8)
    return np.repeat(np.repeat(board[None, ..., None], 3, -1), n, 0)


def test_resolution_setting_is_native_coarsest_or_a_side():
    assert parse_resolution("native") == "native"
    assert parse_resolution("coarsest") == "coarsest"
    assert parse_resolution(40) == 40
    for bad in ("finest", 4, 2.5, True, None):
        with pytest.raises(ConfigError, match="features.resolution"):
            parse_resolution(bad)


def test_coarsest_side_is_the_smallest_domain_median():
    sides = np.array([100, 120, 140, 60, 70, 500, 80])
    domains = np.array(["a", "a", "a", "b", "b", "b", "b"])
    assert coarsest_side(sides, domains) == 75  # b's median; a's is 120


def test_resample_through_removes_detail_only_below_the_crop_side():
    crops = checkerboard()
    out = resample_through(crops, np.array([64, 32, 8]))
    np.testing.assert_array_equal(out[:2], crops[:2])  # at or above the side: untouched
    assert out[2].std() < 0.1 * crops[2].std()  # the one-pixel pattern does not survive 8 px
    assert out.dtype == np.uint8 and out.shape == crops.shape


def test_cell_crop_through_a_smaller_side_loses_the_fine_texture():
    image = np.full((200, 200, 3), 230, np.uint8)
    yy, xx = np.mgrid[:200, :200]
    cell = (xx - 100) ** 2 + (yy - 100) ** 2 < 30 ** 2
    image[cell] = (90, 40, 150)
    image[cell & ((xx // 3) % 2 == 0)] = (60, 20, 120)  # 6-px stripes: lost below ~25 px
    seg_mask = cell[::4, ::4]
    box = np.array([17, 17, 33, 33], np.float32)  # the 60-px cell at the 50-px input
    native, native_mask = cell_crop(image, seg_mask, box, 50, 64)
    coarse, coarse_mask = cell_crop(image, seg_mask, box, 50, 64, max_side=20)
    np.testing.assert_array_equal(coarse_mask, native_mask)  # the same cell, the same place
    inside = ndi.binary_erosion(native_mask, iterations=4)  # away from the blurred outline
    assert coarse[inside, 1].std() < 0.5 * native[inside, 1].std()
    # A cap above the cell's own pixels (~74 px with margins) changes nothing.
    same, _ = cell_crop(image, seg_mask, box, 50, 64, max_side=60)
    np.testing.assert_array_equal(cell_crop(image, seg_mask, box, 50, 64, max_side=100)[0],
                                  native)
    assert not np.array_equal(same, native)


def two_scale_segmentation(n: int) -> Segmentation:
    """Lab a's cells span twice the pixels of lab b's (boxes of 16 and 8 px at a 32-px input)."""
    masks = np.zeros((n, 32, 32), bool)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        lo, hi = (8, 24) if i < n // 2 else (12, 20)
        masks[i, lo:hi, lo:hi] = True
        boxes[i] = (lo, lo, hi, hi)
    return Segmentation(np.zeros((n, 8, 8, 3), np.uint8), masks, boxes, np.zeros(n, bool),
                        np.ones(n, np.float32), {})


def test_coarsest_resolution_resamples_the_sharper_lab_only(tmp_path):
    manifest = write_disc_manifest(tmp_path, n=6, size=64)  # lab_a rows first, then lab_b
    seg = two_scale_segmentation(len(manifest))
    sides = native_crop_sides(manifest, seg)
    np.testing.assert_allclose(sides[:6], 16 * 64 / 32 * 1.16)
    np.testing.assert_allclose(sides[6:], 8 * 64 / 32 * 1.16)
    settings = FeatureSettings(("efficientnet_lite0",), 32, True, 6, 4, False, 64)
    native, meta = stream_cell_features(manifest, seg, settings)
    assert "resolution_side" not in meta or meta["resolution_side"] is None
    coarse, meta = stream_cell_features(manifest, seg,
                                        FeatureSettings(**{**settings.__dict__,
                                                           "resolution": "coarsest"}))
    assert meta["resolution_side"] == 19  # lab b's 18.6 px
    a, b = slice(0, 6), slice(6, 12)
    np.testing.assert_allclose(coarse["efficientnet_lite0"][b], native["efficientnet_lite0"][b],
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(coarse["efficientnet_lite0"][a], native["efficientnet_lite0"][a],
                           atol=1e-3)


def test_features_settings_read_the_resolution(tiny_cfg):
    assert FeatureSettings.from_config(tiny_cfg).resolution == "native"
    tiny_cfg.features.resolution = "coarsest"
    assert FeatureSettings.from_config(tiny_cfg).resolution == "coarsest"
    tiny_cfg.features.resolution = "sharpest"
    with pytest.raises(ConfigError, match="features.resolution"):
        FeatureSettings.from_config(tiny_cfg)


def test_apply_sees_a_new_lab_at_the_run_s_resolution(tiny_cfg, tmp_path):
    run_cfg = copy.deepcopy(tiny_cfg)
    run_cfg.features.resolution = "coarsest"
    user = copy.deepcopy(tiny_cfg)
    user.run_dir = str(tmp_path / "new_lab")
    run = SourceRun(Path(tiny_cfg.run_dir), run_cfg, {"cell_features": {"resolution_side": 23}},
                    "", None, None)
    assert applied_config(run, user).features.resolution == 23
    native = SourceRun(Path(tiny_cfg.run_dir), copy.deepcopy(tiny_cfg), {"cell_features": {}},
                       "", None, None)
    assert applied_config(native, user).features.resolution == "native"
    assert OmegaConf.is_config(applied_config(native, user))


def test_the_rule_s_low_resolution_lab_and_the_coarsest_option():
    from feature_options import at_resolution
    crops = checkerboard(n=4)
    masks = np.ones((4, 32, 32), bool)
    sides = np.array([40.0, 40.0, 20.0, 20.0])
    labs = shifted_crops(crops, masks, sides)
    low_crops, _, low_sides = labs[LOW_RES_LAB]
    np.testing.assert_array_equal(low_sides, sides / 2)
    assert low_crops.std() < 0.5 * crops.std()
    # Two domains whose medians are 40 and 10 px: only cells above 10 px are resampled.
    domains = np.array(["src", "src", "low", "low"])
    both = at_resolution(crops, np.array([40.0, 40.0, 10.0, 10.0]), domains, "coarsest")
    np.testing.assert_array_equal(both[2:], crops[2:])
    assert both[:2].std() < 0.5 * crops[:2].std()
    np.testing.assert_array_equal(at_resolution(crops, sides, domains, "native"), crops)
