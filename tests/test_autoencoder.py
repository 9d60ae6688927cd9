"""Conv and transformer autoencoders: shapes, value range, inputs, masking, clear errors."""

import pytest
import torch
from omegaconf import OmegaConf

from dorl.autoencoder import ConvCAE, FeatureScaler, TransformerCAE, build_autoencoder
from dorl.config import package_defaults


def _cae_cfg(**overrides):
    cfg = package_defaults().cae
    cfg.width, cfg.latent_dim = 4, 6
    cfg.transformer.dim, cfg.transformer.depth, cfg.transformer.heads = 16, 1, 2
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def _scaler(shape):
    return FeatureScaler(torch.zeros(shape), torch.ones(shape))


def test_conv_cae_shapes_and_output_range():
    model = ConvCAE(32, latent_dim=6, width=4)
    out = model({"crop": torch.rand(5, 3, 32, 32)})
    assert out.z.shape == (5, 6) and out.image.shape == (5, 3, 32, 32) and out.features is None
    assert out.image.min() >= 0 and out.image.max() <= 1
    model.eval()
    assert torch.equal(model.encode({"crop": torch.zeros(2, 3, 32, 32)}),
                       model.encode({"crop": torch.zeros(2, 3, 32, 32)}))


@pytest.mark.parametrize("size", [24, 40, 16])
def test_conv_cae_refuses_unsupported_sizes(size):
    with pytest.raises(ValueError, match="multiple of 16"):
        ConvCAE(size, 6, 4)


@pytest.mark.parametrize("kind", ["features", "both"])
def test_conv_cae_with_pooled_features_reconstructs_them(kind):
    cfg = _cae_cfg(input=kind, **{"loss.feature": 1.0})
    model = build_autoencoder(cfg, 32, _scaler((10,)))
    batch = {"crop": torch.rand(3, 3, 32, 32), "features": torch.randn(3, 10)}
    out = model(batch)
    assert out.z.shape == (3, 6) and out.features.shape == (3, 10)
    out.image.mean().backward()
    assert all(p.grad is not None for p in model.to_latent.parameters())


def test_transformer_cae_masks_tokens_only_in_training():
    model = TransformerCAE(32, 6, _scaler((8, 4, 4)), dim=16, depth=1, heads=2, mask_ratio=0.5,
                           width=4, reconstruct_features=True)
    batch = {"features": torch.randn(3, 8, 4, 4), "crop": torch.rand(3, 3, 32, 32)}
    model.train()
    visible, idx = model._tokens(batch)
    assert visible.shape == (3, 8, 16) and idx.shape == (3, 8)
    out = model(batch)
    assert out.z.shape == (3, 6) and out.image.shape == (3, 3, 32, 32)
    assert out.features.shape == (3, 8, 4, 4)
    model.eval()
    assert model._tokens(batch)[1] is None
    assert torch.equal(model.encode(batch), model.encode(batch))


def test_transformer_with_crop_token():
    cfg = _cae_cfg(arch="transformer", input="both")
    model = build_autoencoder(cfg, 32, _scaler((8, 4, 4)))
    out = model({"features": torch.randn(2, 8, 4, 4), "crop": torch.rand(2, 3, 32, 32)})
    assert out.z.shape == (2, 6)


def test_build_autoencoder_explains_bad_combinations():
    with pytest.raises(ValueError, match="sam.infer.features=spatial"):
        build_autoencoder(_cae_cfg(arch="transformer", input="features"), 32, _scaler((8,)))
    with pytest.raises(ValueError, match="cae.input=features"):
        build_autoencoder(_cae_cfg(arch="transformer", input="crop"), 32, None)
    with pytest.raises(ValueError, match="needs SAM features"):
        build_autoencoder(_cae_cfg(input="both"), 32, None)
    with pytest.raises(ValueError, match="cae.arch"):
        build_autoencoder(_cae_cfg(arch="mlp"), 32, None)
