"""Time the synthetic cell generator and measure the domain shift it creates; print the figures.

Speed: images per second (wall and CPU) for ``--n`` images in each of ``--domains``, written as
files (images, masks, manifest) like ``dorl data synth`` does.

Domain shift: a logistic regression on per-channel colour histograms and a random forest on
16x16 downsampled pixels, each trained on one domain, scored (macro-F1) in its own domain
(3-fold cross-validation) and on every other domain. A real shift shows as a large drop off
the diagonal; the classes stay learnable inside every domain.

    python bench/bench_synth.py                        # 3 x 1000 images at 128 px
    python bench/bench_synth.py --n 200 --domains lab_a lab_b lab_c lab_d
    python bench/bench_synth.py --montage montage.png  # also save example cells per lab/class

The machine is shared: note the load average printed with the figures.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dorl.config import load_config
from dorl.data.images import read_rgb
from dorl.data.synth.cells import LOOKS, draw_cell
from dorl.data.synth.domains import domain_style
from dorl.data.synth.generate import generate_from_config

REPO = Path(__file__).resolve().parents[1]


def colour_histograms(images: np.ndarray) -> np.ndarray:
    """Per-channel 16-bin histograms of (n, H, W, 3) uint8 images, shape (n, 48)."""
    bins = (images // 16).reshape(len(images), -1, 3)
    return np.concatenate([np.stack([np.bincount(b[:, c], minlength=16) for b in bins])
                           for c in range(3)], axis=1) / bins.shape[1]


def downsampled_pixels(images: np.ndarray, side: int = 16) -> np.ndarray:
    """Images block-averaged to side x side, flattened, shape (n, side * side * 3)."""
    n, h, w, _ = images.shape
    blocks = images[:, :h - h % side, :w - w % side].reshape(n, side, h // side, side,
                                                            w // side, 3)
    return blocks.mean(axis=(2, 4)).reshape(n, -1) / 255.0


def shift_table(features: np.ndarray, labels: np.ndarray, domains: np.ndarray, make_model,
                seed: int) -> pd.DataFrame:
    """Macro-F1 of a model trained on each domain (rows) and scored on each domain (columns).

    The diagonal is 3-fold cross-validated inside the domain.
    """
    names = list(dict.fromkeys(domains))
    table = pd.DataFrame(index=pd.Index(names, name="train \\ test"), columns=names, dtype=float)
    for source in names:
        chosen = domains == source
        table.loc[source, source] = cross_val_score(make_model(seed), features[chosen],
                                                    labels[chosen], cv=3,
                                                    scoring="f1_macro").mean()
        model = make_model(seed).fit(features[chosen], labels[chosen])
        for target in names:
            if target != source:
                other = domains == target
                table.loc[source, target] = f1_score(labels[other], model.predict(
                    features[other]), average="macro")
    return table


def summarise(table: pd.DataFrame) -> str:
    """One line: mean in-domain and mean cross-domain macro-F1."""
    values = table.to_numpy(dtype=float)
    diagonal = np.eye(len(values), dtype=bool)
    return (f"mean in-domain macro-F1 {values[diagonal].mean():.3f}, "
            f"mean cross-domain {values[~diagonal].mean():.3f}")


def save_montage(path: Path, domains: list[str], size: int, per_class: int, seed: int) -> None:
    """Save a grid of example cells: one row per (domain, class), mask outline on the first."""
    rows = []
    for domain in domains:
        style = domain_style(domain)
        for k, cls in enumerate(LOOKS):
            tiles = []
            for i in range(per_class):
                image, mask = draw_cell(cls, style, size, np.random.default_rng([seed, k, i]))
                if i == 0:
                    cell = mask > 0
                    edge = cell ^ np.roll(cell, 1, 0) | cell ^ np.roll(cell, 1, 1)
                    image[edge] = (0, 255, 0)
                tiles.append(image)
            rows.append(np.concatenate(tiles, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images per domain")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--domains", nargs="+", default=["lab_a", "lab_b", "lab_c"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--montage", type=Path, help="also save example cells to this PNG")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(REPO / "configs" / "default.yaml", [
            f"data.root={tmp}/synth", f"seed={args.seed}", f"data.synth.n_per_domain={args.n}",
            f"data.synth.image_size={args.size}",
            f"data.synth.domains=[{','.join(args.domains)}]"])
        wall, cpu = time.perf_counter(), time.process_time()
        manifest = generate_from_config(cfg)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        n = len(manifest)
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"generated {n} images ({len(args.domains)} x {args.n}, {args.size} px) with "
              f"masks and manifest: {wall:.1f} s wall ({n / wall:.0f} images/s), "
              f"{cpu:.1f} s CPU ({n / cpu:.0f} images/s per core)")
        images = np.stack([read_rgb(manifest.image_path(i)) for i in range(n)])
    labels = manifest.table["label"].to_numpy()
    domains = manifest.table["domain"].to_numpy()
    print("\nmean RGB per domain:")
    for domain in args.domains:
        mean = images[domains == domain].reshape(-1, 3).mean(axis=0)
        print(f"  {domain}: {np.round(mean, 1)}")

    def logistic(seed):
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))

    def forest(seed):
        return RandomForestClassifier(n_estimators=200, n_jobs=1, random_state=seed)

    for name, features, make_model in (
            ("logistic regression on colour histograms", colour_histograms(images), logistic),
            ("random forest on 16x16 pixels", downsampled_pixels(images), forest)):
        table = shift_table(features, labels, domains, make_model, args.seed)
        print(f"\n{name} (macro-F1, rows train, columns test):")
        print(table.round(3).to_string())
        print(summarise(table))
    if args.montage:
        save_montage(args.montage, args.domains, args.size, 6, args.seed)
        print(f"\nmontage: {args.montage}")


if __name__ == "__main__":
    main()
