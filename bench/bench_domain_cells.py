"""How many cells a new lab needs for its own per-domain statistics.

A lab embedded with ``dorl apply`` is standardised with its own feature mean and standard
deviation. This bench measures how many of a domain's cells those statistics need, on the source
lab alone (no target label): 5-fold on the source, each fold model trained on four folds
standardised with their own statistics, the held-out fold standardised with the statistics of
``n`` of its cells (5 random draws per n). The rule, fixed before the run: the minimum is the
smallest ``n`` whose mean macro-F1 is within 0.02 of the score with all the held-out cells.

    python bench/bench_domain_cells.py runs/realdata/features.h5ad --domain acevedo20
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from dorl.featstore import read_features

SIZES = (5, 10, 20, 30, 50, 100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("features", help="a feature file of a run (its raw cell features are used)")
    ap.add_argument("--domain", required=True, help="the labelled domain to measure on")
    ap.add_argument("--obsm", default="X_efficientnet_lite0",
                    help="the raw features (before per-domain standardisation)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    fs = read_features(args.features, obsm=True)
    rows = fs.domains == args.domain
    X, y = fs.features(args.obsm)[rows], fs.labels[rows]
    scores: dict[int, list[float]] = {}
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y):
            mean, std = X[train].mean(0), X[train].std(0) + 1e-6
            model = LogisticRegression(max_iter=500, class_weight="balanced").fit(
                (X[train] - mean) / std, y[train])
            for n in [s for s in SIZES if s < len(test)] + [len(test)]:
                for _ in range(5):
                    cells = rng.choice(test, size=n, replace=False)
                    stats = X[cells].mean(0), X[cells].std(0) + 1e-6
                    pred = model.predict((X[test] - stats[0]) / stats[1])
                    scores.setdefault(n, []).append(f1_score(y[test], pred, average="macro"))
    full = max(scores)
    print(f"{args.features} [{args.obsm}], domain {args.domain}: {len(y)} cells, seeds "
          f"{args.seeds}; held-out folds of {full} cells")
    print("| cells for the statistics | macro-F1 (mean ± std) |\n|---|---|")
    for n, values in scores.items():
        label = f"{n} (all)" if n == full else str(n)
        print(f"| {label} | {np.mean(values):.3f} ± {np.std(values):.3f} |")
    enough = min(n for n, v in scores.items() if np.mean(v) >= np.mean(scores[full]) - 0.02)
    print(f"smallest n within 0.02 of all cells: {enough}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
