"""Tests for dorl.sam.models and dorl.sam.tiny_vit: backbones, checkpoints, prompts, batching."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from dorl.sam.checkpoints import CheckpointMismatchError, default_checkpoint
from dorl.sam.models import BACKBONES, PROMPTS, build_sam, sam_from_config, vit_window_size
from dorl.sam.tiny_vit import TinyViT, WindowAttention

# isort: split (segment_anything is importable only after dorl.sam.models registers it)
from segment_anything.modeling.image_encoder import get_rel_pos  # noqa: E402


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return build_sam("tiny", None, 64)


def _images(n, h=70, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_import_needs_no_torchvision():
    code = ("import sys; sys.modules['torchvision'] = None; import dorl.sam.models; "
            "dorl.sam.models.build_sam('tiny', None, 64)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_preprocess_resizes_and_validates(tiny):
    x = tiny.preprocess(_images(3))
    assert x.shape == (3, 3, 64, 64) and x.dtype == torch.float32
    mixed = tiny.preprocess([_images(1, 50, 40)[0], _images(1, 90, 90)[0]])
    assert mixed.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="uint8"):
        tiny.preprocess(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        tiny.preprocess(np.zeros((1, 8, 8), np.uint8)[..., None])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_decode_is_per_image_and_batch_invariant(tiny, prompt):
    x = tiny.preprocess(_images(4))
    with torch.no_grad():
        emb = tiny.encode(x)
        batched = tiny.decode(emb, prompt, 0.9)
        single = torch.cat([tiny.decode(emb[i:i + 1], prompt, 0.9) for i in range(4)])
    assert batched.shape == (4, 1, 32, 32)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


@pytest.mark.parametrize("prompt", ["none", "center_box"])
def test_decode_matches_stock_sam_decoder_per_image(tiny, prompt):
    emb = tiny.encode(tiny.preprocess(_images(2)))
    ours = tiny.decode(emb, prompt, 0.8)
    for i in range(2):
        boxes = tiny.prompt_boxes(1, prompt, 0.8)
        sparse, dense = tiny.prompt_encoder(points=None, boxes=boxes, masks=None)
        stock, _ = tiny.mask_decoder(emb[i:i + 1], tiny.prompt_encoder.get_dense_pe(), sparse,
                                     dense, multimask_output=False)
        torch.testing.assert_close(ours[i:i + 1], stock, rtol=1e-5, atol=1e-5)


def test_prompts_differ_and_validate(tiny):
    emb = tiny.encode(tiny.preprocess(_images(2)))
    outs = {p: tiny.decode(emb, p, 0.5) for p in PROMPTS}
    assert not torch.allclose(outs["none"], outs["center_box"])
    assert not torch.allclose(outs["center_box"], outs["whole_box"])
    with pytest.raises(ValueError, match="unknown prompt"):
        tiny.decode(emb, "points", 0.9)
    with pytest.raises(ValueError, match="box_fraction"):
        tiny.decode(emb, "center_box", 1.5)
    torch.testing.assert_close(tiny.prompt_boxes(1, "center_box", 0.5),
                               torch.tensor([[16.0, 16.0, 48.0, 48.0]]))


def test_forward_backpropagates_to_encoder(tiny):
    tiny.train()
    logits = tiny(torch.from_numpy(_images(2, 64, 64)), "whole_box", 0.9)
    logits.mean().backward()
    assert tiny.image_encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_encode_features(tiny):
    feats = tiny.encode(tiny.preprocess(_images(2)), return_features=True)
    assert feats["embedding"].shape == (2, 32, 8, 8)
    assert feats["spatial"].shape == (2, 32, 8, 8)
    torch.testing.assert_close(feats["pooled"], feats["spatial"].mean(dim=(2, 3)))


def test_sam_from_config_records_provenance(tiny_cfg):
    model, prov = sam_from_config(tiny_cfg)
    assert model.backbone == "tiny" and model.image_size == 64
    assert prov == {"backbone": "tiny", "checkpoint": None, "checkpoint_sha256": None,
                    "image_size": 64}


def test_checkpoint_roundtrip_and_hash(tiny, tmp_path, tiny_cfg):
    path = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), path)
    loaded = build_sam("tiny", path, 64)
    x = tiny.preprocess(_images(2))
    torch.testing.assert_close(loaded(x, "center_box", 0.9), tiny.eval()(x, "center_box", 0.9))
    tiny_cfg.sam.checkpoint = str(path)
    _, prov = sam_from_config(tiny_cfg)
    assert prov["checkpoint"] == str(path) and len(prov["checkpoint_sha256"]) == 64


def test_missing_and_mismatched_checkpoints(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("DORL_CHECKPOINT_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"sam_vit_b_01ec64\.pth.*" + str(tmp_path)):
        default_checkpoint("vit_b")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_sam("tiny", tmp_path / "nowhere.pth", 64)
    path = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="holds tiny weights.*litemedsam"):
        build_sam("litemedsam", path, 64)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="cannot read"):
        build_sam("tiny", junk, 64)
    state = tiny.state_dict()
    del state["mask_decoder.iou_token.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match="missing: mask_decoder.iou_token.weight"):
        build_sam("tiny", path, 64)


def test_unknown_backbone_and_bad_size():
    with pytest.raises(ValueError, match="unknown SAM backbone"):
        build_sam("vit_x", None)
    with pytest.raises(ValueError, match="multiple of 16"):
        build_sam("vit_b", None, 200)


def test_vit_window_divides_grid():
    assert vit_window_size(1024) == 14
    for size, window in [(224, 14), (256, 16), (512, 16)]:
        assert vit_window_size(size) == window and (size // 16) % window == 0


def _tiny_vit():
    torch.manual_seed(0)
    encoder = TinyViT(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                      window_sizes=(7, 7, 14, 7), out_chans=16)
    with torch.no_grad():  # non-trivial BatchNorm statistics and attention biases
        for name, tensor in encoder.named_parameters():
            if "attention_biases" in name or "bn" in name:
                tensor.normal_(0.5, 0.3)
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return encoder.eval()


@pytest.mark.parametrize("size", [56, 64, 100])
def test_tiny_vit_any_size_and_folding_exact(size):
    encoder = _tiny_vit()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        before = encoder(x)
        assert before.shape == (2, 16, size // 4, size // 4)
        encoder.fold_batchnorm()
        after = encoder(x)
        channels_last = encoder.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(channels_last, before, rtol=1e-4, atol=1e-4)


def test_checkpointed_blocks_give_the_same_output_and_gradients():
    encoder = _tiny_vit().fold_batchnorm().train()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)

    def gradients():
        encoder.zero_grad(set_to_none=True)
        x.grad = None
        out = encoder(x)
        out.square().mean().backward()
        return out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in
                                               encoder.named_parameters() if p.grad is not None}

    plain = gradients()
    encoder.checkpoint_blocks()
    checkpointed = gradients()
    torch.testing.assert_close(checkpointed[0], plain[0])
    torch.testing.assert_close(checkpointed[1], plain[1])
    assert checkpointed[2].keys() == plain[2].keys() and plain[2]
    for name in plain[2]:
        torch.testing.assert_close(checkpointed[2][name], plain[2][name], msg=name)


def test_window_padding_equals_zero_tokens():
    """Padding the projected q, k, v equals zero-padding the tokens before the norm (as trained)."""
    torch.manual_seed(0)
    attention = WindowAttention(dim=8, num_heads=2, window_size=7)
    with torch.no_grad():
        attention.norm.bias.normal_()
        attention.attention_biases.normal_()
        x = torch.randn(2, 10, 12, 8)
        zero_padded = torch.nn.functional.pad(x, (0, 0, 0, 2, 0, 4))  # to 14 x 14
        expected = attention(zero_padded)[:, :10, :12]
        torch.testing.assert_close(attention(x), expected)


def test_window_attention_equals_the_written_out_formula():
    """The fused attention kernel computes softmax(q k^T / sqrt(d) + bias) v per window."""
    torch.manual_seed(0)
    attention = WindowAttention(dim=8, num_heads=2, window_size=4)
    with torch.no_grad():
        attention.attention_biases.normal_()
        x = torch.randn(3, 8, 4, 8)  # two windows side by side in height
        qkv = attention.qkv(attention.norm(x))
        expected = torch.empty_like(x)
        bias = attention.attention_biases[:, attention.attention_bias_idxs]
        for top in (0, 4):
            window = qkv[:, top:top + 4].reshape(3, 16, 2, 12).transpose(1, 2)
            q, k, v = window.split(4, dim=3)
            weights = (q @ k.transpose(-2, -1) / 2.0 + bias).softmax(-1)
            expected[:, top:top + 4] = (weights @ v).transpose(1, 2).reshape(3, 4, 4, 8)
        torch.testing.assert_close(attention(x), attention.proj(expected))


def test_tiny_vit_rejects_bad_input():
    encoder = _tiny_vit()
    with pytest.raises(ValueError, match="multiples of 4"):
        encoder(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        encoder(torch.randn(1, 1, 32, 32))


def test_litemedsam_checkpoint_keys_match_exactly():
    path = default_checkpoint("litemedsam")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = BACKBONES["litemedsam"](256)  # unfolded BatchNorm, as in the checkpoint
    assert set(model.state_dict()) == set(state)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_litemedsam_pretrained_small_input():
    model = build_sam("litemedsam", "default", 64)
    x = model.preprocess(_images(2, 100, 100))
    with torch.inference_mode():
        feats = model.encode(x, return_features=True)
        logits = model.decode(feats["embedding"], "center_box", 0.9)
    assert feats["embedding"].shape == (2, 256, 16, 16) and feats["pooled"].shape == (2, 320)
    assert logits.shape == (2, 1, 64, 64) and torch.isfinite(logits).all()


@pytest.mark.realdata
def test_litemedsam_segments_zheng_cells(shared_datasets):
    """Zero-shot, a centred 90 % box gives a reasonable whole-cell mask on expert-drawn masks."""
    from PIL import Image

    folder = shared_datasets / "zheng2018-cellavision" / "Dataset 2"
    files = sorted(folder.glob("*.bmp"))[:6]
    model = build_sam("litemedsam", "default", 128)
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    with torch.inference_mode():
        logits = model(model.preprocess(images), "center_box", 0.9)
    dices = []
    for logit, path in zip(logits, files):
        truth = np.asarray(Image.open(path.with_suffix(".png")).convert("L")) >= 64
        pred = torch.nn.functional.interpolate(logit[None], size=truth.shape,
                                               mode="bilinear")[0, 0].numpy() > 0
        dices.append(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    assert np.mean(dices) > 0.5


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory):
    """A ViT-B SAM at 1024 px with random position tables, and its file as Meta ships it."""
    torch.manual_seed(0)
    full = build_sam("vit_b", None, 1024)
    with torch.no_grad():
        for name, param in full.image_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_()
    state = full.state_dict()
    state["pixel_mean"] = torch.zeros(3, 1, 1)  # as in Meta's files
    path = tmp_path_factory.mktemp("vit_b") / "sam_vit_b_01ec64.pth"
    torch.save(state, path)
    return full, path


@pytest.mark.parametrize("size", [224, 256, 512])
def test_vit_b_checkpoint_interpolates_to_small_inputs(vit_b_checkpoint, size):
    full, path = vit_b_checkpoint
    small = build_sam("vit_b", path, size)
    grid = size // 16
    assert small.image_encoder.pos_embed.shape == (1, grid, grid, 768)
    window = vit_window_size(size)
    assert small.image_encoder.blocks[0].attn.rel_pos_h.shape == (2 * window - 1, 64)
    assert small.image_encoder.blocks[2].attn.rel_pos_h.shape == (2 * grid - 1, 64)
    # the resized tables give the same biases SAM's own on-the-fly interpolation would
    for block in (0, 2):
        size_q = window if block == 0 else grid
        for axis in ("rel_pos_h", "rel_pos_w"):
            ours = getattr(small.image_encoder.blocks[block].attn, axis)
            sams = getattr(full.image_encoder.blocks[block].attn, axis)
            torch.testing.assert_close(get_rel_pos(size_q, size_q, ours),
                                       get_rel_pos(size_q, size_q, sams))
    torch.testing.assert_close(small.mask_decoder.state_dict(), full.mask_decoder.state_dict())
    with torch.inference_mode():
        logits = small(small.preprocess(_images(1, size, size)), "whole_box")
    assert logits.shape == (1, 1, size // 4, size // 4)


def test_a_checkpoint_of_another_backbone_is_refused(vit_b_checkpoint):
    with pytest.raises(CheckpointMismatchError, match="vit_b weights.*'vit_l'.*sam.backbone=vit_b"):
        build_sam("vit_l", vit_b_checkpoint[1], 224)
