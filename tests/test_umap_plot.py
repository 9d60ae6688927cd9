"""UMAP plots: files, reproducibility, fit-on-source and coordinates stored back."""

from __future__ import annotations

import numpy as np
import pytest

from dorl.featstore import FeatureFileError, read_features
from dorl.viz.umap import colour_map, fit_umap, umap_from_config
from tests.helpers import synthetic_features


@pytest.fixture
def cfg(tiny_cfg, tmp_path):
    path = synthetic_features(tmp_path / "features.h5ad", n_per_domain=40, dim=6, n_unknown=2)
    tiny_cfg.umap.features = str(path)
    return tiny_cfg


def test_umap_writes_png_html_and_stores_coordinates(cfg):
    out = umap_from_config(cfg)
    png, html = out / "umap.png", out / "umap.html"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = html.read_text()
    assert "0.png" in text and "domain: lab_b" in text and "label: eosinophil" in text
    assert '<script src="http' not in text and len(text) > 1_000_000  # plotly.js embedded
    coords = read_features(cfg.umap.features).obsm["X_umap"]
    assert coords.shape == (120, 2) and np.isfinite(coords).all()


@pytest.mark.slow
def test_umap_is_reproducible_and_can_fit_on_source_domains(cfg):
    fs = read_features(cfg.umap.features)
    a = fit_umap(fs.X, fs.domains, seed=3, n_neighbors=5)
    b = fit_umap(fs.X, fs.domains, seed=3, n_neighbors=5)
    np.testing.assert_array_equal(a, b)
    c = fit_umap(fs.X, fs.domains, seed=3, n_neighbors=5, fit_on="source",
                 source_domains=["lab_a"])
    assert c.shape == (120, 2) and not np.allclose(a, c)


def test_umap_config_errors_name_the_file(cfg):
    cfg.umap.fit_on = "source"
    cfg.umap.source_domains = ["lab_z"]
    with pytest.raises(FeatureFileError, match=r"features.h5ad: umap.fit_on=source needs"):
        umap_from_config(cfg)


def test_colours_are_fixed_and_unknown_is_grey():
    colours = colour_map(["b", "unknown", "a", "b"])
    assert list(colours) == ["a", "b", "unknown"] and colours["unknown"] == "#b0b0b0"
    assert colour_map(["a", "b"]) == {k: v for k, v in colours.items() if k != "unknown"}
