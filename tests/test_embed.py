"""Stage 1 end to end: settings checked first, the autoencoder's cells and labels, the feature
file's contents, reuse and refusal."""

import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dorl.pipeline.embed as embed
from dorl.cae.settings import CAESettings
from dorl.config import ConfigError
from dorl.data.manifest import Manifest
from dorl.featstore import FeatureFileError, read_features
from dorl.pipeline.embed import check_settings, embed_segmentation, feature_signature, run_embed
from dorl.pipeline.encoder_training import trainable_labels, training_rows
from dorl.sam.segmentation import Segmentation

CLASSES = ("neutrophil", "lymphocyte", "monocyte")


def toy_cells(n_per_domain=24, size=32, seed=0):
    """A manifest, a Segmentation and cell features of drawn cells (three labs)."""
    rng = np.random.default_rng(seed)
    rows = []
    for d, domain in enumerate(("lab_a", "lab_b", "lab_c")):
        for i in range(n_per_domain):
            c = CLASSES[i % 3]
            rows.append({"path": f"{domain}/{i}.png", "domain": domain, "label": c,
                         "label_raw": c, "label_fine": c, "sha256": f"{d}{i}", "mask_path": "",
                         "split": "train", "group": f"{domain}{i}"})
    n = len(rows)
    crops = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    seg = Segmentation(crops, np.ones((n, 8, 8), bool),
                       np.zeros((n, 4), np.float32), np.arange(n) % 10 == 0,
                       np.ones(n, np.float32),
                       {"sam_pooled": rng.normal(size=(n, 12)).astype(np.float32)},
                       {"signature": "toyseg", "checkpoint_sha256": "abc", "backbone": "toy"})
    shift = np.repeat(np.arange(3), n_per_domain)[:, None] * 5.0
    feats = {"efficientnet_lite0": (rng.normal(size=(n, 6)) * (1 + shift) + shift)
             .astype(np.float32)}
    return Manifest(pd.DataFrame(rows), Path("/nonexistent"), "mature5"), seg, (feats, {})


def _embed(cfg, manifest, seg, cell):
    """The feature file of ``cell``, with the quality settings ``cfg`` holds now."""
    return embed_segmentation(cfg, manifest, seg, cell, check_settings(cfg))


def test_feature_file_holds_standardised_features_metadata_and_provenance(tiny_cfg):
    manifest, seg, cell = toy_cells()
    tiny_cfg.cae.enabled = False
    tiny_cfg.qc.enabled = False  # the toy cells have no image files
    fs = read_features(_embed(tiny_cfg, manifest, seg, cell))
    assert list(fs.obs.index) == list(manifest.table["path"])
    for col in ("path", "domain", "label", "label_raw", "label_fine", "split", "group",
                "seg_fallback", "cae_trained_on"):
        assert col in fs.obs.columns, col
    assert fs.obs["seg_fallback"].tolist() == seg.fallback.tolist()
    domains = manifest.table["domain"].to_numpy()
    raw = cell[0]["efficientnet_lite0"]
    for d in np.unique(domains):
        block = raw[domains == d]
        np.testing.assert_allclose(fs.X[domains == d], (block - block.mean(0)) / block.std(0),
                                   rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(fs.obsm["X_efficientnet_lite0"], raw)
    np.testing.assert_array_equal(fs.obsm["X_sam_pooled"], seg.features["sam_pooled"])
    uns = fs.uns
    assert uns["signature"] == feature_signature(tiny_cfg, manifest)
    assert "config.cae" not in uns["signature"] and uns["protocol"] == "none"
    assert uns["data_signature"] == manifest.signature()
    assert uns["label_order"] == ["neutrophil", "lymphocyte", "monocyte", "eosinophil",
                                  "basophil"]
    assert "torch" in uns["versions"] and "cae:" in uns["config"]
    assert "cae_encoder" not in uns["hashes"] and uns["hashes"]["checkpoint_sha256"] == "abc"
    assert set(uns["invariance"]) == {"embedding", "sam_pooled", "efficientnet_lite0"}
    assert not fs.obs["cae_trained_on"].any()
    assert (Path(tiny_cfg.run_dir) / "invariance.png").is_file()


def test_features_standardise_none_keeps_the_features_as_encoded(tiny_cfg):
    manifest, seg, cell = toy_cells()
    tiny_cfg.cae.enabled = False
    tiny_cfg.qc.enabled = False  # the toy cells have no image files
    tiny_cfg.features.standardise = "none"
    fs = read_features(_embed(tiny_cfg, manifest, seg, cell))
    np.testing.assert_allclose(fs.X, cell[0]["efficientnet_lite0"], rtol=1e-6)


def test_inductive_protocol_holds_the_target_domain_out(tiny_cfg):
    manifest, _, _ = toy_cells()
    tiny_cfg.cae.protocol = "inductive"
    tiny_cfg.cae.target_domains = ["lab_c"]
    rows = training_rows(manifest, CAESettings.from_config(tiny_cfg))
    assert set(manifest.table["domain"].to_numpy()[rows]) == {"lab_a", "lab_b"}
    tiny_cfg.cae.target_domains = ["lab_z"]
    with pytest.raises(ConfigError, match="lab_z"):
        training_rows(manifest, CAESettings.from_config(tiny_cfg))
    tiny_cfg.cae.protocol = "transductive"
    assert len(training_rows(manifest, CAESettings.from_config(tiny_cfg))) == len(manifest)


def test_labels_reach_training_only_from_the_label_domains(tiny_cfg):
    manifest, _, _ = toy_cells()
    labels = trainable_labels(manifest, CAESettings.from_config(tiny_cfg))
    assert (labels == -1).all()  # cae.supervision=none: no label at all
    tiny_cfg.cae.supervision, tiny_cfg.cae.loss.supervised = "source_labels", 1.0
    tiny_cfg.cae.label_domains = ["lab_a"]
    labels = trainable_labels(manifest, CAESettings.from_config(tiny_cfg))
    domains = manifest.table["domain"].to_numpy()
    assert (labels[domains != "lab_a"] == -1).all()
    assert list(labels[domains == "lab_a"][:3]) == [0, 1, 2]
    tiny_cfg.cae.label_domains = ["lab_q"]
    with pytest.raises(ConfigError, match="lab_q"):
        trainable_labels(manifest, CAESettings.from_config(tiny_cfg))


@pytest.mark.parametrize("key, value, message", [
    ("features.standardise", "global", "features.standardise"),
    ("features.encoders", [], "features.encoders"),
    ("features.tta", 3, "features.tta"),
    ("cae.supervision", "labels", "cae.supervision"),
    ("features.crop_size", 50, "multiple of 32"),
])
def test_a_bad_setting_fails_before_any_work(tiny_cfg, monkeypatch, key, value, message):
    def no_work(cfg):
        raise AssertionError("work started before the settings were checked")

    tiny_cfg.cae.enabled = True
    monkeypatch.setattr(embed, "load_data", no_work)
    keys = key.split(".")
    setattr(tiny_cfg[keys[0]], keys[1], value)
    with pytest.raises(ConfigError, match=message):
        run_embed(tiny_cfg)


def test_run_embed_reuses_a_matching_file_and_refuses_another(tiny_cfg, monkeypatch):
    """With the autoencoder off, its settings change nothing: the file is reused."""
    manifest, seg, cell = toy_cells()
    monkeypatch.setattr(embed, "load_data", lambda cfg: manifest)
    tiny_cfg.cae.enabled = False
    tiny_cfg.qc.enabled = False  # the toy cells have no image files
    path = _embed(tiny_cfg, manifest, seg, cell)
    stamp = path.stat().st_mtime_ns
    assert run_embed(tiny_cfg) == path  # no SAM stage runs: the file is reused
    # The autoencoder is off: its settings change nothing, and the file is reused.
    tiny_cfg.cae.epochs = 5
    assert run_embed(tiny_cfg) == path and path.stat().st_mtime_ns == stamp
    tiny_cfg.features.tta = 1
    with pytest.raises(FeatureFileError, match="another config"):
        run_embed(tiny_cfg)


def test_run_embed_end_to_end_trains_the_encoder_and_embeds_with_it(autoencoder_run):
    tiny_cfg = copy.deepcopy(autoencoder_run)  # run_embed(tiny_cfg) as the fixture ran it
    path = Path(tiny_cfg.run_dir) / "features.h5ad"
    fs = read_features(path)
    assert fs.X.shape == (len(fs.obs), 1280) and np.isfinite(fs.X).all()
    assert fs.obsm["X_efficientnet_lite0"].shape == (len(fs.X), 1280)
    run_dir = Path(tiny_cfg.run_dir)
    for name in ("cae/encoder.pt", "cae/encoder.json", "cae/last.pt", "cae/crops.h5"):
        assert (run_dir / name).is_file(), name
    from dorl.provenance import sha256_file

    assert fs.uns["hashes"]["cae_encoder"] == sha256_file(run_dir / "cae" / "encoder.pt")
    assert fs.uns["cae_training"]["epochs_run"] == tiny_cfg.cae.epochs
    assert fs.uns["protocol"] == "transductive" and fs.obs["cae_trained_on"].all()
    t0 = time.perf_counter()
    assert run_embed(tiny_cfg) == path
    assert time.perf_counter() - t0 < 30  # reused, not made again
    tiny_cfg.cae.loss.mmd = 1.0
    with pytest.raises(FeatureFileError, match="config.cae"):
        run_embed(tiny_cfg)


def test_check_settings_returns_the_stage_settings(tiny_cfg):
    tiny_cfg.cae.enabled = True
    settings = check_settings(tiny_cfg)
    assert settings.features.encoders == ("efficientnet_lite0",)
    assert settings.cae.epochs == tiny_cfg.cae.epochs
    assert settings.segment.batch_size == tiny_cfg.sam.infer.batch_size
    assert settings.qc.fail_on_fallback is False
    tiny_cfg.cae.enabled = False
    assert check_settings(tiny_cfg).cae is None
