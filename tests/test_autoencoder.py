"""Conv and transformer autoencoders: shapes, value range, inputs, masking, clear errors."""

import pytest
import torch
from omegaconf import OmegaConf

from dorl.cae.models import ConvCAE, FeatureScaler, TransformerCAE, build_autoencoder
from dorl.cae.settings import CAESettings
from dorl.config import package_defaults


def _cae_cfg(**overrides):
    cfg = package_defaults().cae
    cfg.width, cfg.latent_dim = 4, 6
    cfg.input, cfg.loss.feature = "crop", 0.0  # the crop-only model; tests add features
    cfg.transformer.dim, cfg.transformer.depth, cfg.transformer.heads = 16, 1, 2
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return CAESettings.from_config(cfg)


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
    model = build_autoencoder(cfg, 32, _scaler((10,)), 2)
    batch = {"crop": torch.rand(3, 3, 32, 32), "features": torch.randn(3, 10),
             "domain": torch.tensor([0, 1, 1])}
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
    model = build_autoencoder(cfg, 32, _scaler((8, 4, 4)), 2)
    out = model({"features": torch.randn(2, 8, 4, 4), "crop": torch.rand(2, 3, 32, 32),
                 "domain": torch.tensor([1, 0])})
    assert out.z.shape == (2, 6)


def test_build_autoencoder_explains_bad_combinations():
    with pytest.raises(ValueError, match="sam.infer.features=spatial"):
        build_autoencoder(_cae_cfg(arch="transformer", input="features"), 32, _scaler((8,)), 2)
    with pytest.raises(ValueError, match="cae.input=features"):
        build_autoencoder(_cae_cfg(arch="transformer", input="crop"), 32, None, 2)
    with pytest.raises(ValueError, match="needs features"):
        build_autoencoder(_cae_cfg(input="both"), 32, None, 2)
    with pytest.raises(ValueError, match="cae.arch"):
        build_autoencoder(_cae_cfg(arch="mlp"), 32, None, 2)


def test_conditional_decoder_uses_the_domain_and_the_encoder_ignores_it():
    torch.manual_seed(0)
    model = build_autoencoder(_cae_cfg(domain_code_dim=4), 32, None, n_domains=3)
    crop = torch.rand(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        z = model.encode({"crop": crop})
        assert torch.equal(z, model.encode({"crop": crop, "domain": torch.tensor([2, 1, 0, 2])}))
        a = model({"crop": crop, "domain": torch.zeros(4, dtype=torch.long)})
        b = model({"crop": crop, "domain": torch.full((4,), 2)})
    assert torch.equal(a.z, b.z) and torch.equal(a.z, z)
    assert not torch.equal(a.image, b.image)  # the reconstruction depends on the domain
    model.train()
    model({"crop": crop, "domain": torch.tensor([0, 0, 2, 2])}).image.square().mean().backward()
    grad = model.decoder.domain_code.weight.grad.abs().sum(1)
    assert grad[0] > 0 and grad[2] > 0 and grad[1] == 0  # only the cells' own domain codes
    with pytest.raises(ValueError, match="batch\\['domain'\\]"):
        model({"crop": crop})


def test_unconditional_decoder_has_no_domain_code():
    model = build_autoencoder(_cae_cfg(domain_code_dim=0), 32, None, n_domains=3)
    assert model.decoder.domain_code is None
    out = model({"crop": torch.rand(2, 3, 32, 32), "domain": torch.tensor([0, 1])})
    assert out.image.shape == (2, 3, 32, 32)
