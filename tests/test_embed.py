"""Stage 1 after segmentation: feature file contents, protocols, label blindness, reuse."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dorl.pipeline.embed as embed
from dorl.pipeline.embed import embed_segmentation, feature_signature, run_embed, split_cells
from dorl.config import ConfigError
from dorl.data.manifest import Manifest
from dorl.featstore import FeatureFileError, read_features
from dorl.sam.segmentation import Segmentation

CLASSES = ("neutrophil", "lymphocyte", "monocyte")


def toy_cells(n_per_domain=24, size=32, seed=0):
    """A manifest and a Segmentation of drawn cells: class sets the disc size, domain the hue."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    rows, crops = [], []
    for d, domain in enumerate(("lab_a", "lab_b", "lab_c")):
        for i in range(n_per_domain):
            c = i % 3
            disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * (0.18 + 0.08 * c)) ** 2
            img = np.full((size, size, 3), 128, np.uint8)
            img[disc] = np.clip(np.array([120 + 40 * d, 70 + 25 * c, 150 - 20 * d])
                                + rng.normal(0, 6, 3), 0, 255)
            crops.append(img)
            rows.append({"path": f"{domain}/{i}.png", "domain": domain, "label": CLASSES[c],
                         "label_raw": CLASSES[c], "label_fine": CLASSES[c], "sha256": f"{d}{i}",
                         "mask_path": "", "split": "val" if i % 6 == 0 else "train",
                         "group": f"{domain}{i}"})
    crops = np.stack(crops)
    n = len(crops)
    pooled = rng.normal(size=(n, 12)).astype(np.float32)
    seg = Segmentation(crops, crops.copy(), np.ones((n, 8, 8), bool),
                       np.zeros((n, 4), np.float32), np.arange(n) % 10 == 0,
                       {"sam_pooled": pooled},
                       {"signature": "toyseg", "checkpoint_sha256": "abc", "backbone": "toy"})
    return Manifest(pd.DataFrame(rows), Path("/nonexistent"), "mature5"), seg


@pytest.fixture
def toy_cfg(tiny_cfg):
    """tiny_cfg with the autoencoder on, for the drawn toy cells, whose images exist only as
    crops: it reads the segmentation's SAM features instead of cell features cut from images."""
    tiny_cfg.features.encoders = []
    tiny_cfg.cae.enabled = True
    return tiny_cfg


def test_feature_file_holds_embeddings_metadata_and_provenance(toy_cfg):
    manifest, seg = toy_cells()
    path = embed_segmentation(toy_cfg, manifest, seg)
    fs = read_features(path)
    assert fs.X.shape == (72, toy_cfg.cae.latent_dim)
    assert list(fs.obs.index) == list(manifest.table["path"])
    for col in ("path", "domain", "label", "label_raw", "label_fine", "split", "group",
                "seg_fallback"):
        assert col in fs.obs.columns, col
    assert fs.obs["seg_fallback"].tolist() == seg.fallback.tolist()
    np.testing.assert_array_equal(fs.obsm["X_sam_pooled"], seg.features["sam_pooled"])
    uns = fs.uns
    assert uns["signature"] == feature_signature(toy_cfg, manifest)
    assert uns["protocol"] == "transductive" and uns["data_signature"] == manifest.signature()
    assert uns["label_order"] == ["neutrophil", "lymphocyte", "monocyte", "eosinophil",
                                  "basophil"]
    assert "torch" in uns["versions"] and "cae:" in uns["config"]
    assert len(uns["hashes"]["cae_checkpoint"]) == 64
    assert uns["hashes"]["checkpoint_sha256"] == "abc"
    assert set(uns["invariance"]) == {"embedding", "sam_pooled"}
    run_dir = Path(toy_cfg.run_dir)
    for name in ("invariance.png", "cae/loss_curves.png", "cae/best.pt", "cae/last.pt"):
        assert (run_dir / name).is_file(), name


def test_class_labels_do_not_change_the_embeddings(toy_cfg, tmp_path):
    manifest, seg = toy_cells()
    first = read_features(embed_segmentation(toy_cfg, manifest, seg)).X
    shuffled = manifest.table.copy()
    for col in ("label", "label_raw", "label_fine"):
        shuffled[col] = np.random.default_rng(1).permutation(shuffled[col].to_numpy())
    toy_cfg.run_dir = str(tmp_path / "shuffled")
    second = read_features(embed_segmentation(
        toy_cfg, Manifest(shuffled, manifest.base_dir, "mature5"), seg)).X
    np.testing.assert_array_equal(first, second)


def test_inductive_protocol_holds_the_target_domain_out(toy_cfg):
    manifest, seg = toy_cells()
    toy_cfg.cae.protocol = "inductive"
    toy_cfg.cae.target_domains = ["lab_c"]
    train, val = split_cells(toy_cfg, manifest)
    domains = manifest.table["domain"].to_numpy()
    assert "lab_c" not in set(domains[train]) | set(domains[val])
    fs = read_features(embed_segmentation(toy_cfg, manifest, seg))
    assert fs.uns["protocol"] == "inductive" and fs.uns["target_domains"] == ["lab_c"]
    assert not fs.obs.loc[fs.obs["domain"] == "lab_c", "cae_trained_on"].any()
    assert fs.obs.loc[fs.obs["domain"] != "lab_c", "cae_trained_on"].all()
    assert np.isfinite(fs.X[domains == "lab_c"]).all()


def test_inductive_protocol_needs_known_target_domains(toy_cfg):
    manifest, _ = toy_cells()
    toy_cfg.cae.protocol = "inductive"
    toy_cfg.cae.target_domains = ["lab_z"]
    with pytest.raises(ValueError, match="lab_z"):
        split_cells(toy_cfg, manifest)


def test_validation_falls_back_to_a_random_fraction(toy_cfg):
    manifest, _ = toy_cells()
    manifest.table["split"] = "train"
    train, val = split_cells(toy_cfg, manifest)
    assert len(val) > 0 and not set(train) & set(val) and len(train) + len(val) == len(manifest)


def test_per_domain_feature_norm_feeds_the_autoencoder(toy_cfg):
    manifest, seg = toy_cells()
    shifted = {"sam_pooled": seg.features["sam_pooled"]
               + 5.0 * manifest.table["domain"].map({"lab_a": 0, "lab_b": 1, "lab_c": 2})
               .to_numpy()[:, None].astype(np.float32)}
    seg.features = shifted
    toy_cfg.cae.input, toy_cfg.cae.feature_norm = "both", "per_domain"
    data = embed._cae_data(toy_cfg, manifest, seg, {})
    for d in range(3):
        block = data.features[data.domain_ids == d]
        np.testing.assert_allclose(block.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(block.std(0), 1, atol=1e-4)
    toy_cfg.cae.feature_norm = "per_lab"
    with pytest.raises(ConfigError, match="feature_norm"):
        embed._cae_data(toy_cfg, manifest, seg, {})


@pytest.mark.parametrize("cae_size, expected", [(16, 16), (64, 32)])
def test_autoencoder_crops_are_downsized_never_upsized(toy_cfg, cae_size, expected):
    manifest, seg = toy_cells(size=32)
    toy_cfg.cae.image_size = cae_size
    data = embed._cae_data(toy_cfg, manifest, seg, {})
    assert data.side == expected
    assert data.crop_rows(np.arange(3)).shape == (3, expected, expected, 3)


def test_run_embed_reuses_a_matching_file_and_refuses_another(toy_cfg, monkeypatch):
    manifest, seg = toy_cells()
    monkeypatch.setattr(embed, "load_data", lambda cfg: manifest)
    path = embed_segmentation(toy_cfg, manifest, seg)
    stamp = path.stat().st_mtime_ns
    assert run_embed(toy_cfg) == path  # no SAM stage runs: the file is reused
    assert path.stat().st_mtime_ns == stamp
    toy_cfg.cae.loss.mmd = 0.0
    with pytest.raises(FeatureFileError, match="another config"):
        run_embed(toy_cfg)


def test_run_embed_end_to_end_on_tiny_config(tiny_cfg):
    path = run_embed(tiny_cfg)
    fs = read_features(path)
    assert len(fs.X) == len(fs.obs) > 0 and np.isfinite(fs.X).all()
    assert "X_sam_pooled" in fs.obsm
    # the default cell encoder, on crops cut from the images
    assert fs.obsm["X_efficientnet_lite0"].shape == (len(fs.X), 1280)
    assert fs.uns["cell_features"]["stain"] == tiny_cfg.features.stain
    assert run_embed(tiny_cfg) == path


def test_cell_features_replace_the_sam_features_the_autoencoder_reads(toy_cfg):
    manifest, seg = toy_cells()
    rng = np.random.default_rng(0)
    cell = {"efficientnet_lite0": rng.normal(size=(len(manifest), 6)).astype(np.float32),
            "litemedsam": rng.normal(size=(len(manifest), 4)).astype(np.float32)}
    toy_cfg.features.encoders = ["litemedsam", "efficientnet_lite0"]
    toy_cfg.cae.input, toy_cfg.cae.feature_norm = "features", "per_domain"
    data = embed._cae_data(toy_cfg, manifest, seg, cell)
    assert data.features.shape == (len(manifest), 10)  # concatenated in the configured order
    lab_a = data.domain_ids == 0
    expected = cell["litemedsam"][lab_a]
    np.testing.assert_allclose(data.features[lab_a][:, :4],
                               (expected - expected.mean(0)) / expected.std(0), atol=1e-4)
    toy_cfg.cae.arch = "transformer"
    with pytest.raises(ConfigError, match="spatial tokens"):
        embed._cae_data(toy_cfg, manifest, seg, cell)


def test_without_the_autoencoder_the_embedding_is_the_standardised_features(toy_cfg):
    manifest, seg = toy_cells()
    toy_cfg.cae.enabled = False
    fs = read_features(embed_segmentation(toy_cfg, manifest, seg))
    domains = manifest.table["domain"].to_numpy()
    raw = seg.features["sam_pooled"]
    for d in np.unique(domains):
        block = raw[domains == d]
        np.testing.assert_allclose(fs.X[domains == d], (block - block.mean(0)) / block.std(0),
                                   rtol=1e-4, atol=1e-4)
    assert "cae_checkpoint" not in fs.uns["hashes"] and "cae_training" not in fs.uns
    assert not fs.obs["cae_trained_on"].any()
    assert not (Path(toy_cfg.run_dir) / "cae").exists()
    toy_cfg.cae.input = "crop"
    toy_cfg.run_dir = str(Path(toy_cfg.run_dir) / "crop")
    with pytest.raises(ConfigError, match="cae.enabled=false"):
        embed_segmentation(toy_cfg, manifest, seg)
