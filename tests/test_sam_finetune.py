"""LoRA fine-tuning: loss, augmentation, training-set choice, adapter reuse, no
excluded domain (the pseudo-masks it trains on are tested in test_pseudo_masks.py)."""

from __future__ import annotations

import json

import pytest
import torch

from dorl.config import ConfigError
from dorl.sam.augment import augment_batch
from dorl.sam.finetune import (
    ADAPTER_DIR,
    LOG_FILE,
    finetune_from_config,
    segmentation_loss,
    validate,
)
from dorl.sam.finetune_data import training_set, validation_rows
from tests.helpers import write_disc_manifest


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
    from dorl.sam.models import sam_from_config

    tiny_cfg.sam.finetune.exclude_domains = ["lab_b"]
    model, _ = sam_from_config(tiny_cfg)
    data = training_set(tiny_cfg, disc_manifest, model)
    domains = disc_manifest.table["domain"].to_numpy()[data["rows"]]
    assert len(data["rows"]) == 12 and set(domains) == {"lab_a"}
    assert data["images"].shape == (12, 64, 64, 3) and data["masks"].shape == (12, 64, 64)
    assert data["val"].any() and not data["val"].all()


def test_pseudo_masks_are_drawn_evenly_over_domains(tiny_cfg, tmp_path):
    from dorl.sam.models import sam_from_config

    root = tmp_path / "unmasked"
    root.mkdir()
    manifest = write_disc_manifest(root, masks=False)  # lab_a rows come first
    tiny_cfg.sam.finetune.max_images = 8
    model, _ = sam_from_config(tiny_cfg)
    data = training_set(tiny_cfg, manifest, model)
    assert data["sources"] == {"pseudo:lab_a": 4, "pseudo:lab_b": 4}


def test_finetune_writes_a_reusable_adapter(tiny_cfg, disc_manifest, caplog):
    tiny_cfg.sam.finetune.max_images = 16
    adapter = finetune_from_config(tiny_cfg, disc_manifest)
    assert adapter.name == ADAPTER_DIR and adapter.parent.name == "run"
    log = json.loads((adapter / LOG_FILE).read_text())
    assert log["best_epoch"] == 1 and len(log["history"]) == 1 and log["n_train"] > 0
    assert log["best_val_dice"] == log["history"][0]["val_dice"]  # the kept epoch's score
    stamp = (adapter / "adapter_model.safetensors").stat().st_mtime_ns
    caplog.set_level("INFO")
    assert finetune_from_config(tiny_cfg, disc_manifest) == adapter
    assert (adapter / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert "reused" in caplog.text


def test_block_checkpointing_needs_an_encoder_that_can(tiny_cfg, disc_manifest):
    tiny_cfg.sam.finetune.checkpoint_blocks = True  # the test backbone is a plain ViT
    with pytest.raises(ConfigError, match="sam.finetune.checkpoint_blocks: the tiny encoder"):
        finetune_from_config(tiny_cfg, disc_manifest)


def test_finetune_disabled_or_without_masks_gives_none(tiny_cfg, disc_manifest):
    tiny_cfg.sam.finetune.enabled = False
    assert finetune_from_config(tiny_cfg, disc_manifest) is None
    tiny_cfg.sam.finetune.enabled = True
    tiny_cfg.sam.finetune.exclude_domains = ["lab_a", "lab_b"]
    assert finetune_from_config(tiny_cfg, disc_manifest) is None


def test_finetuning_lowers_training_and_validation_loss(tiny_cfg, disc_manifest):
    tiny_cfg.sam.finetune.epochs = 8
    tiny_cfg.sam.finetune.lr = 1e-3
    tiny_cfg.sam.finetune.warmup_epochs = 0
    tiny_cfg.sam.finetune.augment = None
    adapter = finetune_from_config(tiny_cfg, disc_manifest)
    history = json.loads((adapter / LOG_FILE).read_text())["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]


class FixedSquareSAM(torch.nn.Module):
    """Predicts the same centre square (side 8 of 32) whatever the image."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pixel_mean", torch.zeros(3))

    def forward(self, images, prompt, box_fraction):
        logits = torch.full((images.shape[0], 1, 32, 32), -10.0)
        logits[..., 12:20, 12:20] = 10.0
        return logits


def test_validation_scores_each_zoom_and_averages_them():
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 12:20, 12:20] = True
    images = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    loader = [(images, masks)]
    plain = validate(FixedSquareSAM(), loader, "center_box", 0.9, 0.2, 0.8)
    assert plain["val_dice"] == pytest.approx(1.0, abs=1e-3) and "val_dice_x1" not in plain
    zoomed = validate(FixedSquareSAM(), loader, "center_box", 0.9, 0.2, 0.8, zooms=(1.0, 2.0))
    # zoomed 2x the true square has side 16: Dice 2 * 64 / (64 + 256) = 0.4
    assert zoomed["val_dice_x1"] == pytest.approx(1.0, abs=1e-3)
    assert zoomed["val_dice_x2"] == pytest.approx(0.4, abs=1e-2)
    assert zoomed["val_dice"] == pytest.approx(0.7, abs=1e-2)


def test_a_lone_manifest_val_row_is_topped_up_to_the_validation_fraction():
    import numpy as np

    is_val = np.zeros(48, bool)
    is_val[5] = True
    val = validation_rows(is_val, 0.15, np.random.default_rng(0))
    assert val[5] and val.sum() == 7
    many = np.arange(48) < 10
    np.testing.assert_array_equal(validation_rows(many, 0.15, np.random.default_rng(0)), many)
    assert not validation_rows(np.zeros(1, bool), 0.5, np.random.default_rng(0)).any()
    drawn = validation_rows(np.zeros(400, bool), 0.15, np.random.default_rng(0))
    assert 30 < drawn.sum() < 90  # each row with probability 0.15


def test_finetune_without_validation_keeps_the_last_epoch(tiny_cfg, tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from dorl.sam.finetune import finetune
    from dorl.sam.lora import add_lora
    from dorl.sam.models import sam_from_config

    model, _ = sam_from_config(tiny_cfg)
    add_lora(model, 2, 2.0, 0.0, ["qkv"], False)
    images = torch.zeros(4, 64, 64, 3, dtype=torch.uint8)
    masks = torch.zeros(4, 64, 64, dtype=torch.bool)
    masks[:, 16:48, 16:48] = True
    images[masks] = 200
    loader = DataLoader(TensorDataset(images, masks), batch_size=2)
    result = finetune(model, loader, None, epochs=2, lr=1e-3, weight_decay=0.0,
                      warmup_epochs=0, prompt="center_box", box_fraction=0.9,
                      out_dir=tmp_path / "adapter")
    assert result["best_epoch"] == 2 and result["best_val_dice"] is None
    assert [set(r) >= {"train_loss"} and "val_dice" not in r for r in result["history"]] \
        == [True, True]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
