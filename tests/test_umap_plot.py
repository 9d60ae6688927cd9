"""UMAP plots: files, reproducibility, fit-on-source and coordinates stored back."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dorl.config import ConfigError
from dorl.featstore import FeatureFileError, read_features
from dorl.viz.explorer import colour_map, write_explorer
from dorl.viz.umap import fit_umap, umap_from_config
from tests.helpers import synthetic_features


@pytest.fixture
def cfg(tiny_cfg, tmp_path):
    path = synthetic_features(tmp_path / "features.h5ad", n_per_domain=40, dim=6, n_unknown=2)
    tiny_cfg.umap.feature_file = str(path)
    return tiny_cfg


def test_umap_writes_png_html_and_stores_coordinates(cfg):
    out = umap_from_config(cfg)
    png, html = out / "umap.png", out / "umap.html"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = html.read_text()
    assert '"p": "img/0.png"' in text and '"d": "lab_b"' in text and '"l": "eosinophil"' in text
    assert '<script src="http' not in text and len(text) > 1_000_000  # plotly.js embedded
    assert "all 120 cells drawn" in text and "plotly_selected" in text
    coords = read_features(cfg.umap.feature_file).obsm["X_umap"]
    assert coords.shape == (120, 2) and np.isfinite(coords).all()


def test_umap_is_reproducible_and_can_fit_on_source_domains(cfg):
    fs = read_features(cfg.umap.feature_file)
    a = fit_umap(fs.X, fs.domains, seed=3, n_neighbors=5)
    b = fit_umap(fs.X, fs.domains, seed=3, n_neighbors=5)
    np.testing.assert_array_equal(a, b)
    c = fit_umap(fs.X, fs.domains, seed=3, n_neighbors=5, fit_on="source",
                 source_domains=["lab_a"])
    assert c.shape == (120, 2) and not np.allclose(a, c)


def test_the_exact_neighbour_map_keeps_separate_groups_apart():
    """Below UMAP's exact-search size the neighbours come from scikit-learn: groups that are
    apart in the features stay apart on the map."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10, size=(3, 20))
    groups = np.repeat(np.arange(3), 30)
    X = (centres[groups] + rng.normal(size=(90, 20))).astype(np.float32)
    coords = fit_umap(X, np.repeat(["lab_a", "lab_b", "lab_c"], 30), seed=0, n_neighbors=10)
    nearest = np.argsort(((coords[:, None] - coords[None]) ** 2).sum(-1), axis=1)[:, 1]
    assert (groups[nearest] == groups).all()


def test_a_map_leaves_torch_threads_as_they_were():
    """numba's first parallel call in a process sets the shared OpenMP library to every core;
    torch, limited to one thread by OMP_NUM_THREADS, keeps one after the map (a new process:
    only the first call changes anything)."""
    code = ("import numpy as np, torch\n"
            "from dorl.viz.umap import fit_umap\n"
            "X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)\n"
            "fit_umap(X, np.array(['a'] * 40), seed=0, n_neighbors=5)\n"
            "print(torch.get_num_threads())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.stdout.split() == ["1"]


def test_an_unknown_fit_on_is_refused_before_the_feature_file_is_read(cfg, tmp_path):
    cfg.umap.fit_on = "targets"
    cfg.umap.feature_file = str(tmp_path / "missing.h5ad")
    with pytest.raises(ConfigError, match=r"umap.fit_on must be one of \['all', 'source'\]"):
        umap_from_config(cfg)
    with pytest.raises(ConfigError, match="umap.fit_on"):
        fit_umap(np.zeros((8, 2), np.float32), np.array(["a"] * 8), seed=0, fit_on="targets")


def test_umap_config_errors_name_the_file(cfg):
    cfg.umap.fit_on = "source"
    cfg.umap.source_domains = ["lab_z"]
    with pytest.raises(FeatureFileError, match=r"features.h5ad: umap.fit_on=source needs"):
        umap_from_config(cfg)


def test_colours_are_fixed_and_unknown_is_grey():
    colours = colour_map(["b", "unknown", "a", "b"])
    assert list(colours) == ["a", "b", "unknown"] and colours["unknown"] == "#b0b0b0"
    assert colour_map(["a", "b"]) == {k: v for k, v in colours.items() if k != "unknown"}


def test_domain_and_class_palettes_never_share_a_colour():
    domains = colour_map([f"lab_{i}" for i in range(8)], "domain")
    classes = colour_map(["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"],
                         "class")
    assert not set(domains.values()) & set(classes.values())


def test_explorer_embeds_thumbnails_predictions_and_stays_bounded(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    n = 300
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
    obs = pd.DataFrame({"domain": ["a", "b", "c"] * 100, "label": ["monocyte", "basophil"] * 150,
                        "path": [f"{i}.png" for i in range(n)]},
                       index=[f"c{i}" for i in range(n)])
    coords = rng.normal(size=(n, 2))
    predictions = pd.DataFrame({"predicted": "neutrophil", "confidence": 0.5},
                               index=[f"c{i}" for i in range(n)])
    small = write_explorer(coords, obs, tmp_path, tmp_path / "small.html", "t", max_cells=50,
                           predictions=predictions)
    text = small.read_text()
    assert text.count("data:image/jpeg;base64,") == 50
    assert "50 of 300 cells drawn" in text and '"y": "neutrophil"' in text
    full = write_explorer(coords, obs, tmp_path, tmp_path / "full.html", "t", max_cells=n)
    per_cell = (full.stat().st_size - small.stat().st_size) / (n - 50)
    assert per_cell < 3000  # bytes per drawn cell: a 40 px JPEG and its fields


def test_lab_tools_read_the_finished_run(finished_run, tmp_path):
    """anndata opens the feature file, scanpy draws its stored UMAP by domain, and the
    coordinates come as a CSV too."""
    import anndata
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    adata = anndata.read_h5ad(finished_run.run_dir / "features.h5ad")
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2)
    assert {"domain", "label", "path"} <= set(adata.obs.columns)
    sc.settings.figdir = tmp_path
    sc.pl.umap(adata, color="domain", show=False, save="_domain.png")
    assert (tmp_path / "umap_domain.png").stat().st_size > 1000
    table = pd.read_csv(finished_run.run_dir / "umap" / "umap.csv")
    assert list(table.columns) == ["cell_id", "path", "domain", "label", "predicted", "umap_1",
                                   "umap_2"]
    assert len(table) == adata.n_obs and (table["predicted"] != "").all()
    np.testing.assert_allclose(table[["umap_1", "umap_2"]].to_numpy(), adata.obsm["X_umap"],
                               rtol=1e-5)
