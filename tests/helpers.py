"""Helpers shared by the test modules: small data sets drawn or written on the spot."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
import pandas as pd
from PIL import Image

from dorl.data.manifest import load_manifest
from dorl.featstore import FeatureSet, write_features

CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")


@contextmanager
def dorl_records(level: int = logging.INFO):
    """The records of the ``dorl`` loggers at ``level`` and above, for the ``with`` block (they
    do not propagate to pytest's caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level)
    handler.emit = records.append
    logging.getLogger("dorl").addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger("dorl").removeHandler(handler)


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


def synthetic_features(path, n_per_domain=120, dim=12, domains=("lab_a", "lab_b", "lab_c"),
                       seed=0, missing=None, n_unknown=0, groups=False, obsm=False,
                       permute_domain=None):
    """Write a feature file: class blobs, shifted and scaled per domain.

    ``missing`` maps a domain to classes it lacks; ``n_unknown`` cells per domain are labelled
    ``unknown``; with ``groups`` every pair of consecutive cells shares a group. In the domain
    ``permute_domain`` each class sits at the next class's centre, so that only that domain's
    own labels can teach a model its classes (it also lies far from the other domains).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (len(CLASSES), dim))
    weights = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
    X, labels, doms = [], [], []
    for d, domain in enumerate(domains):
        allowed = [c for c in CLASSES if c not in (missing or {}).get(domain, ())]
        p = np.array([weights[CLASSES.index(c)] for c in allowed])
        y = rng.choice(allowed, size=n_per_domain, p=p / p.sum())
        shift, scale = rng.normal(0, 1.0, dim), 1 + 0.2 * d
        noise = rng.normal(0, 1, (n_per_domain, dim))
        step, away = (1, 15.0) if domain == permute_domain else (0, 0.0)
        at = [(CLASSES.index(c) + step) % len(CLASSES) for c in y]
        X.append(scale * (centres[at] + noise) + shift + away)
        y = y.astype(object)
        y[:n_unknown] = "unknown"
        labels += list(y)
        doms += [domain] * n_per_domain
    X = np.concatenate(X).astype(np.float32)
    n = len(X)
    obs = pd.DataFrame({"path": [f"img/{i}.png" for i in range(n)], "domain": doms,
                        "label": labels,
                        "group": [f"g{i // 2}" for i in range(n)] if groups
                        else [f"img/{i}.png" for i in range(n)]},
                       index=[f"c{i}" for i in range(n)])
    extra = {"X_raw": np.concatenate([X, X ** 2], axis=1)} if obsm else {}
    return write_features(path, FeatureSet(X, obs, extra, {"signature": {"data": "synthetic"}}))


def draw_field(rng, nuclei, size=200, lobed=True):
    """A pink field of red cells with dark purple nuclei at ``nuclei`` ((x, y, radius), ...),
    every second one two-lobed when ``lobed``; the true boxes are the nuclei's."""
    field = np.full((size, size, 3), (235, 215, 225), np.float32)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(60):  # red cells
        cx, cy = rng.uniform(0, size, 2)
        field[(xx - cx) ** 2 + (yy - cy) ** 2 < 36] = (205, 140, 175)
    boxes = []
    for i, (cx, cy, r) in enumerate(nuclei):
        two = lobed and i % 2
        for lx, ly in [(cx - r / 2, cy), (cx + r / 2, cy)] if two else [(cx, cy)]:
            field[(xx - lx) ** 2 + (yy - ly) ** 2 < (r * 0.7 if two else r) ** 2] = (90, 8, 150)
        boxes.append((cx - r, cy - r, cx + r, cy + r))
    noise = rng.normal(0, 3, field.shape)
    return np.clip(field + noise, 0, 255).astype(np.uint8), np.asarray(boxes, np.float64)
