"""Batched segmentation: mask cleaning, fallback, crops, caching by signature."""

from __future__ import annotations

import numpy as np
import pytest

from dorl.sam.inference import SegmentSettings, segment_from_config, segment_images
from dorl.sam.masks import GREY, border_fraction, clean_mask, is_usable, mask_box, masked_crop
from dorl.sam.segmentation import Segmentation
from tests.helpers import write_disc_manifest


def test_clean_mask_keeps_largest_component_and_fills_holes():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[5:7, 5:7] = False  # a hole
    mask[15:18, 15:18] = True  # a smaller blob
    out = clean_mask(mask)
    assert out[5, 5] and not out[16, 16]
    assert out.sum() == 100
    assert not clean_mask(np.zeros((5, 5), bool)).any()


def test_usable_rejects_tiny_and_border_masks():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    assert border_fraction(mask) == 0 and is_usable(mask, 0.01, 0.5)
    assert not is_usable(np.ones((20, 20), bool), 0.01, 0.5)
    tiny = np.zeros((20, 20), bool)
    tiny[10, 10] = True
    assert not is_usable(tiny, 0.01, 0.5)


def test_masked_crop_greys_out_the_background():
    image = np.full((32, 32, 3), 250, np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    image[mask] = 10
    crop = masked_crop(image, mask, mask_box(mask), 16)
    assert crop.shape == (16, 16, 3)
    assert crop[8, 8, 0] < 30 and abs(int(crop[0, 0, 0]) - GREY) < 12
    np.testing.assert_array_equal(mask_box(mask), [8, 8, 24, 24])


def test_segment_images_shapes_and_fallback(tiny_cfg):
    from dorl.sam.models import sam_from_config

    model, _ = sam_from_config(tiny_cfg)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40 + 8 * i, 48, 3), dtype=np.uint8) for i in range(4)]
    cell = np.zeros((64, 64), bool)
    cell[16:48, 20:44] = True
    speck = np.zeros((64, 64), bool)
    speck[30:32, 30:32] = True  # 4 pixels: below min_area_frac
    field = np.ones((64, 64), bool)  # covers the whole border
    seg = segment_images(model, images, SegmentSettings.from_config(tiny_cfg), progress=False,
                         masks=[cell, speck, field, np.zeros((64, 64), bool)])
    assert seg.crops.shape == (4, 32, 32, 3) and seg.predicted_iou.shape == (4,)
    assert np.isnan(seg.predicted_iou).all()  # SAM's estimate is not about masks from elsewhere
    assert seg.masks.shape == (4, 64, 64) and seg.boxes.shape == (4, 4)
    assert seg.features["sam_pooled"].shape[0] == 4
    assert seg.fallback.tolist() == [False, True, True, True]
    assert is_usable(seg.masks[0], 0.01, 0.5) and (seg.masks[0] == cell).all()
    assert not seg.masks[1:].any()  # a fallback keeps no mask
    assert (seg.crops[0][0, 0] == GREY).all()  # outside the cell mask: grey
    assert not (seg.crops[1] == GREY).all(-1).any()  # a centre crop keeps every pixel


def test_given_masks_replace_the_models_and_keep_its_features(tiny_cfg):
    from dorl.sam.models import sam_from_config

    model, _ = sam_from_config(tiny_cfg)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    square = np.zeros((64, 64), bool)
    square[20:40, 16:44] = True
    own = segment_images(model, images, SegmentSettings.from_config(tiny_cfg), progress=False)
    given = segment_images(model, images, SegmentSettings.from_config(tiny_cfg), progress=False,
                           masks=[square, square, np.zeros((64, 64), bool)])
    assert (given.masks[:2] == square).all() and list(given.fallback) == [False, False, True]
    np.testing.assert_array_equal(given.boxes[0], [16, 20, 44, 40])
    np.testing.assert_allclose(given.features["sam_pooled"], own.features["sam_pooled"])


def test_batching_does_not_change_results(tiny_cfg):
    from dorl.sam.models import sam_from_config

    model, _ = sam_from_config(tiny_cfg)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    tiny_cfg.sam.infer.batch_size = 6
    a = segment_images(model, images, SegmentSettings.from_config(tiny_cfg), progress=False)
    tiny_cfg.sam.infer.batch_size = 4
    b = segment_images(model, images, SegmentSettings.from_config(tiny_cfg), progress=False)
    np.testing.assert_allclose(a.features["sam_pooled"], b.features["sam_pooled"], atol=1e-5)
    assert (a.masks == b.masks).mean() > 0.999


@pytest.fixture
def small_manifest(tmp_path):
    root = tmp_path / "discs"
    root.mkdir()
    return write_disc_manifest(root, n=4)


def _segment(cfg, manifest):
    """Zero-shot segmentation with the settings ``cfg`` holds now."""
    return segment_from_config(cfg, manifest, None, SegmentSettings.from_config(cfg))


def test_segment_from_config_caches_by_signature(tiny_cfg, small_manifest, caplog, monkeypatch):
    import dorl.sam.inference

    monkeypatch.setattr(dorl.sam.inference, "READ_CHUNK", 3)  # 8 images in chunks of 3, 3 and 2
    seg = _segment(tiny_cfg, small_manifest)
    assert len(seg) == len(small_manifest) and seg.meta["signature"]
    assert seg.features["sam_pooled"].shape[0] == len(small_manifest)
    assert set(seg.meta["fallback_per_domain"]) == {"lab_a", "lab_b"}
    caplog.set_level("INFO")
    again = _segment(tiny_cfg, small_manifest)
    assert "reused" in caplog.text
    np.testing.assert_array_equal(again.crops, seg.crops)
    tiny_cfg.sam.infer.stored_crop_size = 24
    assert _segment(tiny_cfg, small_manifest).crops.shape[1] == 24
    assert isinstance(Segmentation.load(tiny_cfg.run_dir + "/segmentation.h5"), Segmentation)


def _interrupt_after(monkeypatch, n_chunks):
    """Make segment_images fail on its (n_chunks + 1)-th call, as a killed run stops."""
    import dorl.sam.inference

    real, calls = dorl.sam.inference.segment_images, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > n_chunks:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(dorl.sam.inference, "segment_images", flaky)
    return lambda: monkeypatch.setattr(dorl.sam.inference, "segment_images", real)


def test_interrupted_segmentation_resumes_bit_identical(tiny_cfg, small_manifest, tmp_path,
                                                        monkeypatch, caplog):
    import dorl.sam.inference

    monkeypatch.setattr(dorl.sam.inference, "READ_CHUNK", 3)
    whole = _segment(tiny_cfg, small_manifest)
    tiny_cfg.run_dir = str(tmp_path / "resumed")
    restore = _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _segment(tiny_cfg, small_manifest)
    store = tmp_path / "resumed" / "segmentation.h5"
    with pytest.raises(ValueError, match="incomplete \\(6 of 8 rows\\)"):
        Segmentation.load(store)  # the chunk being segmented when it stopped is not counted
    restore()
    caplog.set_level("INFO")
    resumed = _segment(tiny_cfg, small_manifest)
    assert "6 of 8 cells done" in caplog.text
    for key in ("crops", "masks", "boxes", "fallback", "predicted_iou"):
        np.testing.assert_array_equal(getattr(resumed, key), getattr(whole, key))
    np.testing.assert_array_equal(resumed.features["sam_pooled"], whole.features["sam_pooled"])
    assert resumed.meta == whole.meta


def test_a_store_cut_off_mid_write_is_segmented_again(tiny_cfg, small_manifest, monkeypatch,
                                                      caplog):
    whole = _segment(tiny_cfg, small_manifest)
    store = tiny_cfg.run_dir + "/segmentation.h5"
    data = open(store, "rb").read()
    with open(store, "wb") as fh:
        fh.write(data[: len(data) // 3])
    again = _segment(tiny_cfg, small_manifest)
    assert "cannot be read" in caplog.text
    np.testing.assert_array_equal(again.crops, whole.crops)
