"""The cross-domain autoencoder: views, losses, the model, training, resume and checkpoints."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dorl.cae.alignment import class_balanced_mmd2, mmd2
from dorl.cae.contrastive import cross_lab_neighbour_nce, info_nce
from dorl.cae.losses import compute_losses
from dorl.cae.pseudo_labels import choose_pseudo_labels
from dorl.cae.settings import CAESettings
from dorl.cae.train import (
    ENCODER_FILE,
    _backward_lab_by_lab,
    _by_domain,
    CAEData,
    CheckpointError,
    build_autoencoder,
    train_autoencoder,
)
from dorl.cae.views import ViewAugment, jitter_stain, random_view
from dorl.config import ConfigError, package_defaults
from dorl.features.efficientnet import build_efficientnet_lite


def _settings(**overrides) -> CAESettings:
    cfg = package_defaults()
    cfg.features.crop_size = 32
    cfg.cae.batch_per_domain, cfg.cae.epochs = 4, 2
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return CAESettings.from_config(cfg)


def _data(sizes=(12, 12, 3), seed=0, labelled=0) -> CAEData:
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    crops = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = np.full(n, -1)
    labels[:labelled] = np.arange(labelled) % 5
    return CAEData(crops, np.repeat(np.arange(len(sizes)), sizes), labels, 5)


def _train(tmp_path, settings, data=None, signature="sig"):
    data = data or _data()
    return train_autoencoder(data, np.arange(len(data)), settings, 0, tmp_path,
                             torch.device("cpu"), signature, encoder_checkpoint=None)


def test_views_keep_shape_and_range_and_depend_on_the_seed():
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3),
                                                               dtype=np.uint8))
    a = random_view(crops, ViewAugment(), torch.Generator().manual_seed(1))
    b = random_view(crops, ViewAugment(), torch.Generator().manual_seed(1))
    c = random_view(crops, ViewAugment(), torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 32, 32) and 0 <= float(a.min()) and float(a.max()) <= 255
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stain_jitter_without_change_is_the_identity():
    x = torch.rand(2, 3, 8, 8) * 0.9 + 0.05
    same = jitter_stain(x, 0.0, 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, x, atol=1e-4, rtol=1e-4)
    moved = jitter_stain(x, 0.3, 0.1, torch.Generator().manual_seed(0))
    assert float((moved - x).abs().mean()) > 0.01


def test_info_nce_is_low_for_matching_views_and_at_chance_for_noise():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 64, generator=g)
    assert float(info_nce(z, z + 0.01 * torch.randn(16, 64, generator=g), 0.1)) < 0.1
    chance = float(info_nce(torch.randn(16, 64, generator=g), torch.randn(16, 64, generator=g),
                            1.0))
    assert abs(chance - np.log(31)) < 0.5
    with pytest.raises(ValueError, match="two"):
        info_nce(torch.randn(1, 8), torch.randn(1, 8), 0.1)


def test_class_balanced_mmd_ignores_a_change_of_class_mix_that_plain_mmd_sees():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [6.0, 0.0]])
    # Lab x: 80% class 0; lab y: 20% class 0. The same classes, the same look.
    cx = torch.cat([torch.zeros(40, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    cy = torch.cat([torch.zeros(10, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    x = centres[cx] + 0.3 * torch.randn(50, 2, generator=g)
    y = centres[cy] + 0.3 * torch.randn(50, 2, generator=g)
    px, py = torch.eye(2)[cx], torch.eye(2)[cy]
    assert float(mmd2(x, y)) > 0.1
    assert float(class_balanced_mmd2(x, y, px, py)) < 0.02
    assert float(class_balanced_mmd2(x, y + 3.0, px, py)) > 0.1
    only = torch.eye(2)[torch.zeros(50, dtype=torch.long)]  # every cell of y called class 0
    assert float(class_balanced_mmd2(x, y, torch.eye(2)[1 - 0 * cx], only)) == 0.0


def test_model_heads_follow_the_loss_terms():
    settings = _settings(**{"cae.loss.reconstruction": 1.0, "cae.supervision": "source_labels",
                            "cae.loss.supervised": 1.0, "cae.label_domains": ["d0"]})
    model = build_autoencoder(settings, 5, None)
    out = model(torch.rand(4, 3, 32, 32) * 255)
    assert out.pooled.shape == (4, 1280) and out.projected.shape == (4, 128)
    assert out.image.shape == (4, 3, 32, 32) and out.logits.shape == (4, 5)
    assert 0 <= float(out.image.detach().min()) and float(out.image.detach().max()) <= 1
    plain = build_autoencoder(_settings(), 5, None)(torch.rand(2, 3, 32, 32) * 255)
    assert plain.image is None and plain.logits is None


def test_every_loss_term_is_finite_with_a_two_cell_domain():
    settings = _settings(**{"cae.loss.reconstruction": 1.0, "cae.loss.mmd": 1.0,
                            "cae.class_balanced_mmd": False,
                            "cae.supervision": "source_labels", "cae.loss.supervised": 1.0,
                            "cae.label_domains": ["d0"]})
    model = build_autoencoder(settings, 5, None).train()
    pixels = torch.rand(12, 3, 32, 32) * 255
    domains = np.array([0, 0, 0, 0, 1, 1])
    labels = torch.tensor([0, 1, -1, -1, -1, -1])
    terms = compute_losses(model(pixels), pixels, labels, domains, settings)
    for name in ("contrastive", "reconstruction", "mmd", "supervised", "total"):
        assert torch.isfinite(terms[name]) and float(terms[name]) > 0, name
    terms["total"].backward()
    assert model.encoder._conv_stem.weight.grad is not None


def test_settings_refuse_what_cannot_train():
    for overrides, message in [
        ({"cae.supervision": "source_labels", "cae.loss.supervised": 1.0}, "label_domains"),
        ({"cae.loss.supervised": 1.0}, "supervision=source_labels"),
        ({"cae.loss.contrastive": 0.0}, "every weight is 0"),
        ({"cae.protocol": "semi"}, "cae.protocol"),
        ({"features.crop_size": 40}, "multiple of 32"),
        ({"features.encoders": ["litemedsam"]}, "features.encoders"),
        ({"cae.temperature": 0}, "temperature"),
        ({"cae.neighbours_after_epochs": -1}, "neighbours_after_epochs"),
        ({"cae.loss.cross_lab_neighbour": -0.5}, "weights must be >= 0"),
        ({"cae.pseudo_labels.weight": 1.0}, "pseudo_labels.weight > 0 needs"),
        ({"cae.pseudo_labels.fraction": 0.0}, "pseudo_labels.fraction"),
        ({"cae.pseudo_labels.after_epochs": -1}, "pseudo_labels.after_epochs"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _settings(**overrides)


def test_training_writes_an_encoder_that_loads_without_pickle(tmp_path):
    result = _train(tmp_path, _settings())
    assert result.checkpoint == tmp_path / ENCODER_FILE and len(result.history) == 2
    assert all(np.isfinite(h["total"]) for h in result.history)
    state = torch.load(result.checkpoint, weights_only=True)
    adapted = build_efficientnet_lite("efficientnet_lite0", result.checkpoint)
    assert torch.equal(adapted._conv_stem.weight, state["_conv_stem.weight"])
    torch.load(tmp_path / "last.pt", weights_only=True)  # the resumable state too
    # A finished encoder with the same signature is reused, untouched.
    stamp = result.checkpoint.stat().st_mtime_ns
    again = _train(tmp_path, _settings())
    assert again.checkpoint.stat().st_mtime_ns == stamp and again.history == result.history


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    straight = _train(tmp_path / "a", _settings(**{"cae.epochs": 2}))
    _train(tmp_path / "b", _settings(**{"cae.epochs": 1}))
    (tmp_path / "b" / ENCODER_FILE).unlink()  # as if killed after epoch 1's checkpoint
    resumed = _train(tmp_path / "b", _settings(**{"cae.epochs": 2}))
    a = torch.load(straight.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_checkpoint_from_another_config_is_refused(tmp_path):
    _train(tmp_path, _settings(**{"cae.epochs": 1}), signature="sig-a")
    (tmp_path / ENCODER_FILE).unlink()
    with pytest.raises(CheckpointError, match="another config"):
        _train(tmp_path, _settings(**{"cae.epochs": 1}), signature="sig-b")


def test_unlabelled_training_never_reads_labels(tmp_path):
    """Without supervision the labels array is all -1 by construction (the pipeline's job);
    here: with a supervised head the source labels do change the weights."""
    plain = _train(tmp_path / "plain", _settings(**{"cae.epochs": 1}), _data(labelled=0))
    sup = _settings(**{"cae.epochs": 1, "cae.supervision": "source_labels",
                       "cae.loss.supervised": 1.0, "cae.label_domains": ["d0"]})
    one = _train(tmp_path / "one", sup, _data(labelled=12))
    data = _data(labelled=12)
    data.labels[:12] = (data.labels[:12] + 1) % 5
    other = _train(tmp_path / "other", sup, data)
    a, b = (torch.load(r.checkpoint, weights_only=True) for r in (one, other))
    assert not torch.equal(a["_conv_stem.weight"], b["_conv_stem.weight"])
    assert plain.history[0]["supervised"] == 0.0


def test_cross_lab_stain_views_change_training_and_stay_reproducible(tmp_path):
    def weights(name, share):
        result = _train(tmp_path / name, _settings(**{"cae.epochs": 1,
                                                      "cae.augment.cross_lab_stain": share}))
        return torch.load(result.checkpoint, weights_only=True)

    plain, swapped, again = weights("a", 0.0), weights("b", 1.0), weights("c", 1.0)
    assert any(not torch.equal(plain[k], swapped[k]) for k in plain)
    for key in swapped:
        torch.testing.assert_close(swapped[key], again[key], msg=key)
    with pytest.raises(ConfigError, match="cross_lab_stain"):
        _settings(**{"cae.augment.cross_lab_stain": 1.5})


def test_cross_lab_neighbour_positive_comes_from_another_lab():
    # Lab 0's cell i and lab 1's cell i share a direction; within a lab the directions differ.
    base = torch.eye(4)
    z1 = torch.cat([base, base + 0.05])
    domains = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    matched = cross_lab_neighbour_nce(z1, z1.clone(), domains, 0.1)
    # The same views with lab 1's cells in another order: their neighbours' views mismatch.
    shuffled = torch.cat([base, base[[1, 2, 3, 0]] + 0.05])
    mismatched = cross_lab_neighbour_nce(z1, shuffled, domains, 0.1)
    # Matched: the cell's own view ties only with its twin's (log 2); mismatched: far worse.
    assert float(matched) < 0.75 and float(mismatched) > 3.0
    one_lab = cross_lab_neighbour_nce(z1, z1, torch.zeros(8, dtype=torch.long), 0.1)
    assert float(one_lab) == 0.0


def test_cross_lab_neighbour_term_waits_for_its_epoch_and_changes_training(tmp_path):
    def run(name, **overrides):
        return _train(tmp_path / name, _settings(**{"cae.epochs": 2, **overrides}))

    late = run("late", **{"cae.loss.cross_lab_neighbour": 1.0, "cae.neighbours_after_epochs": 1})
    assert late.history[0]["cross_lab_neighbour"] == 0.0
    assert late.history[1]["cross_lab_neighbour"] > 0.0
    plain = torch.load(run("plain").checkpoint, weights_only=True)
    trained = torch.load(late.checkpoint, weights_only=True)
    assert any(not torch.equal(plain[k], trained[k]) for k in plain)


def test_pseudo_labels_are_confident_and_class_balanced_within_each_lab():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    # Lab 0: 30 labelled cells, 10 a class. Lab 1: 40 unlabelled cells, 34 of class 0.
    source = np.repeat(np.arange(3), 10)
    target = np.array([0] * 34 + [1] * 3 + [2] * 3)
    truth = np.concatenate([source, target])
    features = centres[truth] + rng.normal(0, 1.0, (len(truth), 2))
    labels = np.concatenate([source, np.full(len(target), -1)])
    domains = np.repeat([0, 1], [len(source), len(target)])
    chosen = choose_pseudo_labels(features, labels, domains, fraction=0.5, seed=0)
    assert (chosen[:30] == -1).all()  # labelled cells keep their own labels
    taken = chosen >= 0
    # ceil(0.5 * 40 / 3) = 7 a class at most: class 0 cannot flood the lab.
    assert np.bincount(chosen[taken], minlength=3).max() <= 7
    assert (chosen[taken] == truth[taken]).mean() >= 0.9
    assert set(chosen[taken]) == {0, 1, 2}
    # Nothing to learn from: no pseudo-label.
    assert (choose_pseudo_labels(features, np.full(len(truth), -1), domains, 0.5, 0) == -1).all()


def test_pseudo_label_term_waits_for_its_epoch_and_resumes_to_the_same_weights(tmp_path):
    overrides = {"cae.epochs": 2, "cae.supervision": "source_labels",
                 "cae.label_domains": ["0"], "cae.loss.supervised": 1.0,
                 "cae.pseudo_labels.weight": 1.0, "cae.pseudo_labels.after_epochs": 1}
    data = _data(labelled=12)
    full = _train(tmp_path / "full", _settings(**overrides), data)
    assert full.history[0]["pseudo_label"] == 0.0 and full.history[1]["pseudo_label"] > 0.0
    # Stopped after the first epoch, then resumed: the same pseudo-labels, the same weights.
    _train(tmp_path / "cut", _settings(**{**overrides, "cae.epochs": 1}), data)
    (tmp_path / "cut" / ENCODER_FILE).unlink()  # as if killed after epoch 1's checkpoint
    resumed = _train(tmp_path / "cut", _settings(**overrides), data)
    a = torch.load(full.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_backward_lab_by_lab_gives_the_same_gradients_and_batchnorm_statistics():
    settings = _settings(**{"cae.loss.mmd": 1.0, "cae.loss.reconstruction": 1.0,
                            "cae.supervision": "source_labels", "cae.label_domains": ["0"],
                            "cae.loss.supervised": 1.0})
    torch.manual_seed(0)
    pixels = torch.rand(12, 3, 32, 32) * 255  # two views of 6 cells of 3 labs
    domains = np.array([0, 0, 1, 1, 2, 2])
    labels = torch.tensor([0, 1, -1, -1, -1, -1])

    def losses(out):
        return compute_losses(out, pixels, labels, domains, settings)

    runs = []
    for per_lab in (False, True):
        torch.manual_seed(1)
        model = build_autoencoder(settings, 5, None).train()
        both = np.concatenate([domains, domains])
        if per_lab:
            terms = _backward_lab_by_lab(model, pixels, both, losses, 0.5)
        else:
            terms = losses(_by_domain(model, pixels, both))
            (0.5 * terms["total"]).backward()
        runs.append((float(terms["total"]), {n: p.grad.clone() for n, p in
                                             model.named_parameters() if p.grad is not None},
                     {n: b.clone() for n, b in model.named_buffers()}))
    (loss_a, grads_a, stats_a), (loss_b, grads_b, stats_b) = runs
    assert loss_a == pytest.approx(loss_b, rel=1e-6) and grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-3, atol=1e-6)
    for name in stats_a:  # the first, graph-free pass does not count in the running statistics
        torch.testing.assert_close(stats_b[name], stats_a[name])
