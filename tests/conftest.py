"""Shared fixtures: the real package config shrunk for speed, and the shared real datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dorl.config import load_config
from dorl.data.manifest import load_manifest

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
        "cae.epochs=2",
        "cae.batch_per_domain=8",
        "cae.width=8",
        "cae.latent_dim=8",
        "classify.n_folds=2",
        "classify.classifiers=[logreg,knn]",
        "umap.n_neighbors=5",
    ])


def write_disc_manifest(root, domains=("lab_a", "lab_b"), n=12, size=64, masks=True):
    """Pink-background images with one purple disc each (the cell), masks and a manifest."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    rows = []
    for d, domain in enumerate(domains):
        for i in range(n):
            r = rng.uniform(0.2, 0.3) * size
            cx, cy = size / 2 + rng.uniform(-3, 3, 2)
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
            img = np.full((size, size, 3), (235, 200 - 20 * d, 200), np.uint8)
            img[mask] = (120, 60, 160 + 20 * d)
            img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
            path = root / f"{domain}_{i}.png"
            Image.fromarray(img).save(path)
            mask_path = ""
            if masks:
                mask_path = f"{domain}_{i}_mask.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(root / mask_path)
            rows.append({"path": path.name, "domain": domain, "label_fine": "lymphocyte_typical",
                         "mask_path": mask_path})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return load_manifest(root / "manifest.csv", "mature5")
