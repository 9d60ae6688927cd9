"""CAE training: finite losses with unbalanced domains, resume, early stopping, checkpoints."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import dorl.cae.train as cae_train
from dorl.cae.batches import DomainBalancedBatches
from dorl.cae.settings import CAESettings
from dorl.cae.train import CAEData, CheckpointError, compute_losses, encode_cells, train_cae
from dorl.config import package_defaults


def _cfg(**overrides):
    cfg = package_defaults().cae
    cfg.width, cfg.latent_dim, cfg.batch_per_domain, cfg.epochs = 4, 6, 4, 2
    cfg.loss.align_warmup_epochs = 1
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return CAESettings.from_config(cfg)


def _data(sizes=(12, 12, 12), seed=0):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    crops = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    ids = np.repeat(np.arange(len(sizes)), sizes)
    return CAEData(crops, rng.normal(size=(n, 5)).astype(np.float32), ids,
                   [f"d{i}" for i in range(len(sizes))])


def _split(n):
    idx = np.arange(n)
    return idx[idx % 4 != 0], idx[idx % 4 == 0]


def test_losses_stay_finite_when_a_domain_has_two_cells():
    data = _data(sizes=(30, 2, 9))
    cfg = _cfg(**{"loss.coral": 1.0, "input": "both", "loss.feature": 1.0})
    model = cae_train.build_autoencoder(cfg, 32, cae_train.feature_scaler(data.features,
                                                                          np.arange(41)), 3)
    for idx in DomainBalancedBatches(data.domain_ids, 4, seed=0).epoch(0):
        assert len(np.unique(data.domain_ids[idx])) == 3
        batch = data.batch(idx, torch.device("cpu"))
        terms = compute_losses(model, model(batch), batch,
                               torch.from_numpy(data.domain_ids[idx]), cfg.loss, 1.0,
                               tuple(cfg.mmd_bandwidths))
        assert all(torch.isfinite(v) for v in terms.values())
        assert float(terms["align"].detach()) > 0


def test_training_writes_checkpoints_and_curves(tmp_path):
    data = _data()
    train, val = _split(len(data))
    result = train_cae(data, train, val, _cfg(), 0, tmp_path, torch.device("cpu"), "sig")
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file()
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000
    assert len(result.history) == 2
    assert all(np.isfinite(h["val_total"]) for h in result.history)
    z = encode_cells(result.model, data, torch.device("cpu"), batch_size=7)
    assert z.shape == (36, 6) and np.isfinite(z).all()


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    data = _data()
    train, val = _split(len(data))
    straight = train_cae(data, train, val, _cfg(epochs=3), 0, tmp_path / "a",
                         torch.device("cpu"), "sig")
    train_cae(data, train, val, _cfg(epochs=1), 0, tmp_path / "b", torch.device("cpu"), "sig")
    resumed = train_cae(data, train, val, _cfg(epochs=3), 0, tmp_path / "b",
                        torch.device("cpu"), "sig")
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)


def test_checkpoint_from_another_config_is_refused(tmp_path):
    data = _data()
    train, val = _split(len(data))
    train_cae(data, train, val, _cfg(epochs=1), 0, tmp_path, torch.device("cpu"), "sig-a")
    with pytest.raises(CheckpointError, match="another config"):
        train_cae(data, train, val, _cfg(epochs=1), 0, tmp_path, torch.device("cpu"), "sig-b")


def test_early_stopping_keeps_the_best_epoch(tmp_path, monkeypatch):
    val_losses = iter([5.0, 1.0, 2.0, 3.0, 4.0, 0.5])
    real = cae_train._validate

    def fake_validate(*args):
        result = real(*args)
        result["recon"] = next(val_losses)
        result["align"] = -result["recon"]  # a falling total must not keep training going
        result["total"] = 0.0
        return result

    monkeypatch.setattr(cae_train, "_validate", fake_validate)
    data = _data()
    train, val = _split(len(data))
    result = train_cae(data, train, val, _cfg(epochs=6, patience=2), 0, tmp_path,
                       torch.device("cpu"), "sig")
    assert result.stopped_early and len(result.history) == 4 and result.best_epoch == 1
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    for key, value in best["model"].items():
        torch.testing.assert_close(result.model.state_dict()[key], value)


def test_training_moves_the_domain_codes_of_the_conditional_decoder(tmp_path):
    data = _data()
    train, val = _split(len(data))
    cfg = _cfg(domain_code_dim=3, input="crop", **{"loss.feature": 0.0})
    torch.manual_seed(0)
    initial = cae_train.build_autoencoder(cfg, 32, None, 3).decoder.domain_code.weight.clone()
    result = train_cae(data, train, val, cfg, 0, tmp_path, torch.device("cpu"), "sig")
    trained = result.model.decoder.domain_code.weight
    assert trained.shape == (3, 3)
    assert (trained - initial).abs().min() > 0  # every domain's code was trained


def test_consistency_pulls_the_latents_of_two_views_together(tmp_path):
    from dorl.cae.train import _second_view

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    crops = np.full((72, 32, 32, 3), 128, np.uint8)
    for i in range(72):  # discs of various sizes and places, in one of three stains
        c = 16 + rng.uniform(-4, 4, 2)
        disc = (xx - c[0]) ** 2 + (yy - c[1]) ** 2 < rng.uniform(5, 12) ** 2
        crops[i][disc] = [(120, 60, 170), (90, 40, 120), (170, 90, 200)][i % 3]
    data = CAEData(crops, None, np.repeat(np.arange(3), 24), ["d0", "d1", "d2"])
    train, val = _split(len(data))
    gaps = {}
    for weight in (0.0, 5.0):
        cfg = _cfg(epochs=6, input="crop", **{"loss.feature": 0.0, "loss.mmd": 0.0,
                                              "loss.consistency": weight})
        result = train_cae(data, train, val, cfg, 0, tmp_path / str(weight), torch.device("cpu"),
                           "sig")
        assert ("train_consistency" in result.history[0]) == (weight > 0)
        batch = data.batch(val, torch.device("cpu"))
        with torch.no_grad():
            z = result.model.encode(batch)
            z2 = result.model.encode(_second_view(data.crop_rows(val), batch, cfg,
                                                  torch.Generator().manual_seed(1)))
        spread = torch.cdist(z, z).mean()  # how far apart different cells are
        gaps[weight] = float((z - z2).norm(dim=1).mean() / spread)
    assert gaps[5.0] < 0.9 * gaps[0.0], gaps  # measured 0.75 vs 0.90
