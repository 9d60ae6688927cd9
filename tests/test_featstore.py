"""The .h5ad feature store: round trip, AnnData compatibility, signatures, atomic writes."""

import numpy as np
import pandas as pd
import pytest

from dorl.artifacts import FEATURE_FILE, reusable
from dorl.featstore import (
    FeatureFileError,
    FeatureSet,
    add_obsm,
    read_features,
    stored_signature,
    write_features,
)


def _fs(n=12, d=5):
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({
        "path": [f"img/{i}.png" for i in range(n)],
        "domain": ["a", "b", "c"] * (n // 3),
        "label": ["monocyte", "basophil"] * (n // 2),
        "label_raw": ["MO", "BA"] * (n // 2),
        "label_fine": ["monocyte", "basophil"] * (n // 2),
        "split": ["train"] * n,
        "group": [f"g{i // 2}" for i in range(n)],
        "seg_fallback": [False] * (n - 1) + [True],
    }, index=[f"c{i}" for i in range(n)])
    uns = {"signature": {"data": "abc", "seed": 3}, "config_yaml": "seed: 3\n",
           "label_order": ["monocyte", "basophil"], "versions": {"torch": "2.13.0"}}
    return FeatureSet(rng.normal(size=(n, d)), obs, {"X_sam_pooled": rng.normal(size=(n, 7))}, uns)


def test_round_trip(tmp_path):
    fs = _fs()
    write_features(tmp_path / "f.h5ad", fs)
    back = read_features(tmp_path / "f.h5ad")
    np.testing.assert_array_equal(back.X, fs.X.astype(np.float32))
    assert list(back.obs.index) == list(fs.obs.index)
    assert list(back.labels) == list(fs.labels) and list(back.domains) == list(fs.domains)
    assert back.obs["seg_fallback"].tolist() == fs.obs["seg_fallback"].tolist()
    assert back.uns["signature"] == {"data": "abc", "seed": 3}
    assert back.uns["label_order"] == ["monocyte", "basophil"]
    assert back.features("X_sam_pooled").shape == (12, 7)


def test_anndata_reads_it(tmp_path):
    ad = pytest.importorskip("anndata")
    write_features(tmp_path / "f.h5ad", _fs())
    adata = ad.read_h5ad(tmp_path / "f.h5ad")
    assert adata.shape == (12, 5)
    assert isinstance(adata.obs["label"].dtype, pd.CategoricalDtype)
    assert adata.obsm["X_sam_pooled"].shape == (12, 7)
    assert adata.uns["signature"]["seed"] == 3


def test_signature_mismatch_is_refused(tmp_path):
    path = tmp_path / "f.h5ad"
    assert stored_signature(path) is None
    assert not reusable(FEATURE_FILE, path, stored_signature(path), {"data": "abc"}, refuse=True)
    write_features(path, _fs())
    assert stored_signature(path) == {"data": "abc", "seed": 3}
    assert reusable(FEATURE_FILE, path, stored_signature(path), {"data": "abc", "seed": 3},
                    refuse=True, error=FeatureFileError)
    with pytest.raises(FeatureFileError, match="another config.*seed: it has 3, this run has 4"):
        reusable(FEATURE_FILE, path, stored_signature(path), {"data": "abc", "seed": 4},
                 refuse=True, error=FeatureFileError)


def test_add_obsm_and_bad_shapes(tmp_path):
    path = write_features(tmp_path / "f.h5ad", _fs())
    add_obsm(path, "X_umap", np.zeros((12, 2)))
    assert read_features(path).obsm["X_umap"].shape == (12, 2)
    with pytest.raises(FeatureFileError, match="11 rows"):
        add_obsm(path, "X_umap", np.zeros((11, 2)))
    assert read_features(path).obsm["X_umap"].shape == (12, 2)  # failed write lost nothing


def test_bad_files(tmp_path):
    with pytest.raises(FeatureFileError, match="not found"):
        read_features(tmp_path / "none.h5ad")
    (tmp_path / "junk.h5ad").write_bytes(b"not hdf5")
    with pytest.raises(FeatureFileError, match="junk.h5ad"):
        read_features(tmp_path / "junk.h5ad")
    fs = _fs()
    with pytest.raises(FeatureFileError, match="obs has 11 rows"):
        FeatureSet(fs.X, fs.obs.iloc[:11])


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_features(tmp_path / "f.h5ad", _fs())
    before = path.read_bytes()
    import dorl.featstore as store

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_write_uns", boom)
    with pytest.raises(KeyboardInterrupt):
        write_features(path, _fs(n=6))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.h5ad"]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys

    from dorl.atomic import write_text_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".out.txt.{dead}.tmp"  # what SIGKILL leaves behind
        busy = tmp_path / f".out.txt.{running.pid}.tmp"  # a writer still at work
        other = tmp_path / f".other.txt.{dead}.tmp"
        for path in (stale, busy, other):
            path.write_text("half")
        write_text_atomic(tmp_path / "out.txt", "whole")
        assert (tmp_path / "out.txt").read_text() == "whole"
        assert not stale.exists() and busy.exists()
        assert other.exists()  # another target's file is not this write's business
    finally:
        running.kill()
        running.wait()
