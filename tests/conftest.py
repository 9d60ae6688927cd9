"""Shared fixtures: the real package config shrunk for speed, and the shared real datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from dorl.config import load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture
def shared_datasets() -> Path:
    """The real datasets beside the repo; the test is skipped when they are absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture
def tiny_cfg(tmp_path):
    """The real default config (configs/default.yaml over the package defaults), shrunk to run
    in seconds: a tiny random-init SAM, few images and epochs, outputs under ``tmp_path``."""
    return load_config(REPO / "configs" / "default.yaml", [
        f"run_dir={tmp_path / 'run'}",
        f"data.root={tmp_path / 'data'}",
        "data.synth.n_per_domain=24",
        "data.synth.image_size=64",
        "sam.backbone=tiny",
        "sam.image_size=64",
        "sam.finetune.epochs=1",
        "sam.finetune.batch_size=8",
        "sam.finetune.max_images=32",
        "sam.infer.batch_size=16",
        "sam.infer.crop_size=32",
        "features.crop_size=32",
        "features.adabn_cells=16",
        "cae.epochs=2",
        "cae.batch_per_domain=8",
        "classify.n_folds=2",
        "classify.classifiers=[logreg,knn]",
        "umap.n_neighbors=5",
    ])
