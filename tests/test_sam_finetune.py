"""LoRA fine-tuning: loss, schedule, training-set choice, adapter reuse, no excluded domain."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dorl.augment import augment_batch
from dorl.sam_finetune import (ADAPTER_DIR, LOG_FILE, finetune_from_config, lr_factor,
                               segmentation_loss, training_set)
from tests.conftest import write_disc_manifest


@pytest.fixture
def disc_manifest(tmp_path):
    root = tmp_path / "discs"
    root.mkdir()
    return write_disc_manifest(root)


def test_loss_is_low_for_the_right_mask_and_high_for_the_wrong_one():
    target = torch.zeros(2, 16, 16, dtype=torch.bool)
    target[:, 4:12, 4:12] = True
    good = torch.where(target, 8.0, -8.0)[:, None]
    assert segmentation_loss(good, target) < 0.01
    assert segmentation_loss(-good, target) > 0.9


def test_loss_resizes_the_target_to_the_logits():
    target = torch.zeros(1, 64, 64, dtype=torch.bool)
    target[:, 16:48, 16:48] = True
    logits = torch.full((1, 1, 16, 16), -8.0)
    logits[..., 4:12, 4:12] = 8.0
    assert segmentation_loss(logits, target) < 0.01


def test_lr_warms_up_then_decays_to_zero():
    assert lr_factor(0.0, 4, 1) < 0.01
    assert lr_factor(1.0, 4, 1) == pytest.approx(1.0)
    assert lr_factor(2.5, 4, 1) == pytest.approx(0.5)
    assert lr_factor(4.0, 4, 1) == pytest.approx(0.0, abs=1e-9)


def test_augmentation_keeps_shapes_and_moves_mask_with_image():
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(4, 32, 32, 3, dtype=torch.uint8)
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[:, 4:12, 2:10] = True
    images[masks] = 200
    params = {"hue": 0.1, "saturation": 0.2, "brightness": 0.1, "blur_prob": 0.5,
              "scale": [0.8, 1.2], "flip": True}
    out, out_masks = augment_batch(images, masks, params, g)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert out_masks.shape == masks.shape and out_masks.dtype == torch.bool
    bright = out.float().mean(-1) > 100
    for i in range(4):  # the bright square and its mask moved together
        inter = (bright[i] & out_masks[i]).sum()
        assert inter >= 0.8 * out_masks[i].sum()
    same, _ = augment_batch(images, masks, params, torch.Generator().manual_seed(0))
    assert torch.equal(same, out)


def test_excluded_domains_are_never_trained_on(tiny_cfg, disc_manifest):
    from dorl.sam_models import sam_from_config

    tiny_cfg.sam.finetune.exclude_domains = ["lab_b"]
    model, _ = sam_from_config(tiny_cfg)
    data = training_set(tiny_cfg, disc_manifest, model)
    domains = disc_manifest.table["domain"].to_numpy()[data["rows"]]
    assert len(data["rows"]) == 12 and set(domains) == {"lab_a"}
    assert data["images"].shape == (12, 64, 64, 3) and data["masks"].shape == (12, 64, 64)
    assert data["val"].any() and not data["val"].all()


def test_finetune_writes_a_reusable_adapter(tiny_cfg, disc_manifest, caplog):
    tiny_cfg.sam.finetune.max_images = 16
    adapter = finetune_from_config(tiny_cfg, disc_manifest)
    assert adapter.name == ADAPTER_DIR and adapter.parent.name == "run"
    log = json.loads((adapter / LOG_FILE).read_text())
    assert log["best_epoch"] == 1 and len(log["history"]) == 1 and log["n_train"] > 0
    assert 0.0 <= log["best_val_dice"] <= 1.0
    stamp = (adapter / "adapter_model.safetensors").stat().st_mtime_ns
    caplog.set_level("INFO")
    assert finetune_from_config(tiny_cfg, disc_manifest) == adapter
    assert (adapter / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert "reused" in caplog.text


def test_finetune_disabled_or_without_masks_gives_none(tiny_cfg, disc_manifest):
    tiny_cfg.sam.finetune.enabled = False
    assert finetune_from_config(tiny_cfg, disc_manifest) is None
    tiny_cfg.sam.finetune.enabled = True
    tiny_cfg.sam.finetune.exclude_domains = ["lab_a", "lab_b"]
    assert finetune_from_config(tiny_cfg, disc_manifest) is None


def _purple_disc(size=96, radius=24):
    yy, xx = np.mgrid[:size, :size]
    mask = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < radius ** 2
    image = np.full((size, size, 3), (240, 210, 200), np.uint8)  # pink-white background
    image[mask] = (170, 150, 210)  # lilac cytoplasm
    image[(xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (radius / 2) ** 2] = (90, 40, 140)
    return image, mask


def test_colour_mask_finds_a_purple_cell():
    from dorl.pseudo_masks import colour_mask
    from dorl.sam_eval import dice

    image, mask = _purple_disc()
    assert dice(colour_mask(image), mask) > 0.9
    assert not colour_mask(np.full((32, 32, 3), 200, np.uint8)).any()


def test_pseudo_mask_checks_name_the_failure():
    from dorl.pseudo_masks import PseudoMaskChecks, check_pseudo_mask

    _, mask = _purple_disc()
    checks = PseudoMaskChecks(min_agreement=0.85)
    assert check_pseudo_mask(mask, mask, checks) is None
    assert check_pseudo_mask(mask, np.roll(mask, 30, axis=1), checks) == "disagree"
    assert check_pseudo_mask(mask, np.roll(mask, 30, axis=1), PseudoMaskChecks()) is None
    border = np.zeros_like(mask)
    border[:40, :40] = True
    assert check_pseudo_mask(border, border, checks) == "border"
    small = np.zeros_like(mask)
    small[40:44, 40:44] = True
    assert check_pseudo_mask(small, small, checks) == "area"
    two = np.zeros_like(mask)
    two[20:40, 10:30] = True
    two[50:70, 60:80] = True
    assert check_pseudo_mask(two, two, checks) == "shape"


def test_bootstrap_keeps_good_colour_masks_and_drops_bad_ones():
    from dorl.pseudo_masks import bootstrap_pseudo_masks
    from dorl.sam_eval import dice

    image, mask = _purple_disc()
    blank = np.full((96, 96, 3), 230, np.uint8)
    masks, counts = bootstrap_pseudo_masks([image, blank], 64)
    assert counts["kept"] == 1 and masks[1] is None
    small = torch.from_numpy(mask)[None, None].float()
    small = torch.nn.functional.interpolate(small, size=(64, 64))[0, 0].numpy() > 0.5
    assert masks[0].shape == (64, 64) and dice(masks[0], small) > 0.9


@pytest.mark.slow
def test_finetuning_lowers_training_and_validation_loss(tiny_cfg, disc_manifest):
    tiny_cfg.sam.finetune.epochs = 8
    tiny_cfg.sam.finetune.lr = 1e-3
    tiny_cfg.sam.finetune.warmup_epochs = 0
    tiny_cfg.sam.finetune.augment = None
    adapter = finetune_from_config(tiny_cfg, disc_manifest)
    history = json.loads((adapter / LOG_FILE).read_text())["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
