"""Tests for dorl.sam.lora: LoRA injection, freezing, training, save and load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dorl.sam.lora import (
    LORA_CONFIG_FILE,
    META_FILE,
    add_lora,
    has_lora,
    load_adapter,
    save_adapter,
    trainable_summary,
)
from dorl.sam.models import build_sam


def _tiny(seed=0):
    torch.manual_seed(seed)
    return build_sam("tiny", None, 64)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8))


def _train_steps(model, images, steps=3):
    model.train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = model.preprocess(images)
    target = torch.zeros(len(x), 1, 32, 32)
    target[..., 8:24, 8:24] = 1
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x, "center_box", 0.9),
                                                                    target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def test_lora_at_init_equals_base_model(images):
    model = _tiny()
    x = model.preprocess(images)
    with torch.no_grad():
        before = model(x, "center_box", 0.9)
        add_lora(model, rank=4, alpha=8, dropout=0.0, target_modules=["qkv"])
        after = model(x, "center_box", 0.9)
    assert has_lora(model)
    assert torch.equal(before, after)


def test_only_lora_and_decoder_trainable():
    model = add_lora(_tiny(), rank=4, alpha=4, dropout=0.0, target_modules=["qkv"])
    summary = trainable_summary(model)
    # tiny encoder: 2 blocks, qkv 32 -> 96, r=4: 2 * 4 * (32 + 96)
    assert summary["lora"] == 1024
    assert summary["by_module"]["image_encoder"]["trainable"] == 1024
    assert summary["by_module"]["prompt_encoder"]["trainable"] == 0
    assert summary["by_module"]["mask_decoder"]["frozen"] == 0
    assert summary["trainable"] == 1024 + sum(p.numel() for p in model.mask_decoder.parameters())
    with_prompt = add_lora(_tiny(), 4, 4, 0.0, ["qkv"], train_prompt_encoder=True)
    assert trainable_summary(with_prompt)["by_module"]["prompt_encoder"]["frozen"] == 0


def test_training_moves_lora_not_frozen_weights(images):
    model = add_lora(_tiny(), rank=4, alpha=4, dropout=0.0, target_modules=["qkv"])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    _train_steps(model, images)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert all(not torch.equal(params[n], v) for n, v in lora.items())


def test_save_load_reproduces_outputs(images, tmp_path):
    model = _train_steps(add_lora(_tiny(), 4, 4, 0.0, ["qkv"], train_prompt_encoder=True), images)
    with torch.no_grad():
        expected = model(model.preprocess(images), "center_box", 0.9)
    save_adapter(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / LORA_CONFIG_FILE).read_text())
    assert config["r"] == 4 and config["target_modules"] == ["qkv"]
    fresh = load_adapter(_tiny(), tmp_path / "adapter")
    with torch.no_grad():
        got = fresh(fresh.preprocess(images), "center_box", 0.9)
    assert (got - expected).abs().max().item() == 0.0


def test_litemedsam_lora_folds_batchnorm_and_targets_all_attention():
    model = add_lora(build_sam("litemedsam", None, 64), rank=4, alpha=4, dropout=0.0,
                     target_modules=["qkv"])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # 10 attention blocks: qkv widths 128 (x2), 160 (x6), 320 (x2), each r * (d + 3d)
    assert trainable_summary(model)["lora"] == 4 * 4 * (2 * 128 + 6 * 160 + 2 * 320)


def test_adapter_errors(tmp_path, images):
    model = add_lora(_tiny(), 4, 4, 0.0, ["qkv"])
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model, 4, 4, 0.0, ["qkv"])
    with pytest.raises(ValueError, match="not found"):
        add_lora(_tiny(), 4, 4, 0.0, ["no_such_layer"])
    with pytest.raises(ValueError, match="add_lora first"):
        save_adapter(_tiny(), tmp_path / "none")
    save_adapter(model, tmp_path / "adapter")
    with pytest.raises(ValueError, match="tiny at 64 px.*tiny at 128 px"):
        load_adapter(build_sam("tiny", None, 128), tmp_path / "adapter")
    (tmp_path / "adapter" / META_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=META_FILE):
        load_adapter(_tiny(), tmp_path / "adapter")
