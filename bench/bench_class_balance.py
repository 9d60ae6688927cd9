"""What class-balanced standardisation does to each classifier, with the labs' true labels.

`balanced_std` re-standardises each lab with the mean and standard deviation of the mixture in
which every class weighs the same. On the synthetic demonstration, whose labs share one class
mix, it lowers the linear SVM and raises the RBF SVM (docs/history/runs-a-to-m.md, Run J). This bench
separates the two halves of the change and a control, each with the true labels of both labs
(no EM), for every ordered pair of labs of a feature file standardised per domain:

* ``plain``: each lab at its own mean and standard deviation (what ``none`` reads);
* ``balanced``: each lab at its class-balanced mean and standard deviation;
* ``centre only``: the class-balanced mean with the lab's own standard deviation;
* ``scale only``: the lab's own mean with the class-balanced standard deviation;
* ``random offset``: ``plain`` with the target moved by a random offset as large as the
  difference between the two labs' class-balanced offsets (mean of 5 draws).

It also prints how far each class's mean moves between two labs (Euclidean norm, in the
per-domain standardised features): a class that moves more than the others carries more of a
class-balanced mean than of a plain one when it is rare.

    python bench/bench_class_balance.py --features runs/default/features.h5ad
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from dorl.classify.inputs import UNLABELLED
from dorl.classify.registry import build_classifier
from dorl.domain_scaler import DomainStandardScaler
from dorl.featstore import read_features

REPO = Path(__file__).resolve().parents[1]
DRAWS = 5


def _statistics(X: np.ndarray, y: np.ndarray, classes: np.ndarray
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The plain and the class-balanced (mean, std) of one lab's cells (n, d)."""
    means = np.stack([X[y == c].mean(axis=0) for c in classes])
    balanced_mean = means.mean(axis=0)
    balanced_var = np.mean([((X[y == c] - balanced_mean) ** 2).mean(axis=0) for c in classes],
                           axis=0)
    return {"plain": (X.mean(axis=0), X.std(axis=0)),
            "balanced": (balanced_mean, np.sqrt(balanced_var))}


def _standardised(X: np.ndarray, stats: dict, variant: str) -> np.ndarray:
    plain_mean, plain_std = stats["plain"]
    mean, std = stats["balanced"]
    mean = plain_mean if variant in ("plain", "scale only") else mean
    std = plain_std if variant in ("plain", "centre only") else std
    return (X - mean) / np.where(std > 1e-6, std, 1.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", default=str(REPO / "runs" / "default" / "features.h5ad"))
    ap.add_argument("--classifiers", nargs="+", default=["svm_linear", "logreg", "svm_rbf"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    fs = read_features(args.features)
    labelled = ~np.isin(fs.labels, list(UNLABELLED))
    X = np.asarray(fs.X, np.float64)[labelled]
    domains, y = np.asarray(fs.domains)[labelled], np.asarray(fs.labels)[labelled]
    X = DomainStandardScaler().fit(X, domains=domains).transform(X, domains=domains)
    classes = np.unique(y)
    labs = [d for d in np.unique(domains) if set(y[domains == d]) == set(classes)]
    stats = {d: _statistics(X[domains == d], y[domains == d], classes) for d in labs}
    rng = np.random.default_rng(args.seed)
    rows = []
    for source, target in itertools.permutations(labs, 2):
        s, t = domains == source, domains == target
        offsets = [stats[d]["balanced"][0] - stats[d]["plain"][0] for d in (source, target)]
        size = np.sqrt(np.mean((offsets[0] - offsets[1]) ** 2))
        for name in args.classifiers:
            for variant in ("plain", "balanced", "centre only", "scale only"):
                model = build_classifier(name, args.seed).fit(
                    _standardised(X[s], stats[source], variant), y[s])
                predicted = model.predict(_standardised(X[t], stats[target], variant))
                rows.append({"pair": f"{source} -> {target}", "classifier": name,
                             "variant": variant,
                             "macro_f1": f1_score(y[t], predicted, average="macro")})
            model = build_classifier(name, args.seed).fit(X[s], y[s])
            shifted = [f1_score(y[t], model.predict(X[t] + rng.normal(0, size, X.shape[1])),
                                average="macro") for _ in range(DRAWS)]
            rows.append({"pair": f"{source} -> {target}", "classifier": name,
                         "variant": "random offset", "macro_f1": float(np.mean(shifted))})
    table = pd.DataFrame(rows).pivot_table(index=["pair", "classifier"], columns="variant",
                                           values="macro_f1", sort=False)
    print("Macro-F1 with the true labels of both labs:")
    print(table[["plain", "balanced", "centre only", "scale only", "random offset"]]
          .round(3).to_string())
    moves = pd.DataFrame({f"{a} vs {b}": {c: float(np.linalg.norm(
        X[(domains == a) & (y == c)].mean(axis=0) - X[(domains == b) & (y == c)].mean(axis=0)))
        for c in classes} for a, b in itertools.combinations(labs, 2)})
    counts = pd.crosstab(y, domains)[labs]
    print("\nHow far each class's mean moves between two labs (and its cells per lab):")
    print(pd.concat([moves.round(1), counts], axis=1).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
