"""Time the classify stage on a synthetic feature file and print the figures.

Blobs per class, shifted and rescaled per domain, imbalanced like white-cell data; the default
is the embedded default run's size (about 1,200 cells x 50-d, 3 domains).

    python bench/bench_classify.py                    # ~1,200 cells, all classifiers/protocols
    python bench/bench_classify.py --n 36000          # the large-dataset target (<= 5 min)
    python bench/bench_classify.py --classifiers svm_rbf,knn --n-folds 3

The machine is shared: note the load average printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dorl.classify.run import classify_from_config
from dorl.config import load_config
from dorl.featstore import FeatureSet, write_features

CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
PROPORTIONS = np.array([0.45, 0.27, 0.12, 0.11, 0.05])


def synthetic_file(path: Path, n: int, dim: int, n_domains: int, separation: float,
                   seed: int) -> Path:
    """Write ``n`` cells (n_domains equal domains) of ``dim``-d class blobs to ``path``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, separation, (len(CLASSES), dim))
    per = n // n_domains
    X, labels, domains = [], [], []
    for d in range(n_domains):
        codes = rng.choice(len(CLASSES), size=per, p=PROPORTIONS)
        shift, scale = rng.normal(0, 0.5 * separation, dim), 1 + 0.15 * d
        X.append(scale * (centres[codes] + rng.normal(0, 1, (per, dim))) + shift)
        labels += [CLASSES[c] for c in codes]
        domains += [f"lab_{d}"] * per
    obs = pd.DataFrame({"path": [f"cell_{i}.png" for i in range(len(labels))],
                        "domain": domains, "label": labels},
                       index=[f"c{i}" for i in range(len(labels))])
    return write_features(path, FeatureSet(np.concatenate(X), obs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1200, help="cells in all (default 1200)")
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--domains", type=int, default=3)
    parser.add_argument("--separation", type=float, default=0.3,
                        help="spread of the class centres in noise units (lower = harder)")
    parser.add_argument("--classifiers", help="comma-separated registry names (default: config)")
    parser.add_argument("--protocols", help="comma-separated protocols (default: config)")
    parser.add_argument("--n-folds", type=int, help="default: config")
    parser.add_argument("overrides", nargs="*", help="extra config key=value overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = synthetic_file(Path(tmp) / "features.h5ad", args.n, args.dim, args.domains,
                              args.separation, seed=0)
        overrides = [f"run_dir={tmp}/run", f"classify.features.dorl={path}", *args.overrides]
        if args.classifiers:
            overrides.append(f"classify.classifiers=[{args.classifiers}]")
        if args.protocols:
            overrides.append(f"classify.protocols=[{args.protocols}]")
        if args.n_folds:
            overrides.append(f"classify.n_folds={args.n_folds}")
        cfg = load_config(None, overrides)
        start = time.perf_counter()
        out = classify_from_config(cfg)
        wall = time.perf_counter() - start
        summary = json.loads((out / "summary.json").read_text())
    c = cfg.classify
    print(f"cells {args.n} x {args.dim}-d, {args.domains} domains; classifiers "
          f"{list(c.classifiers)}; protocols {list(c.protocols)}; folds {c.n_folds}; "
          f"n_jobs {c.n_jobs}; max_train_cells {c.max_train_cells}; load average at start "
          f"{load_start:.1f}")
    print(f"{'adaptation':<14} {'classifier':<12} {'fit s':>8} {'predict s':>10} "
          f"{'cross-domain macro-F1':>22}")
    for row in summary["seconds"]:
        key = f"dorl/{row['adaptation']}/{row['classifier']}"
        cross = summary["headline"].get(key, {}).get("cross_domain_macro_f1_shared", {}) \
            .get("mean", float("nan"))
        print(f"{row['adaptation']:<14} {row['classifier']:<12} {row['fit_s']:>8.1f} "
              f"{row['predict_s']:>10.1f} {cross:>22.3f}")
    print("(fit and predict seconds are summed over all fits, which run n_jobs at a time)")
    print(f"total wall time: {wall:.1f} s (load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
