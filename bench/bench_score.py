"""Time the classify stage's scoring of one evaluation (one class scope) and print the figures:
dorl's per-class counts (:func:`dorl.classify.scoring.score`) against the sklearn metrics they
replaced, on random labels.

    python bench/bench_score.py                       # 300 cells, 5 classes, 200 repeats
    python bench/bench_score.py --cells 5000 --classes 13

The machine is shared: note the load average printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from dorl.classify.scoring import score


def per_call(fn, repeats: int) -> float:
    """Mean seconds of ``fn()`` over ``repeats`` calls."""
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = [f"class_{k}" for k in range(args.classes)]
    truth, pred = rng.choice(labels, args.cells), rng.choice(labels, args.cells)

    def with_sklearn():
        precision_recall_fscore_support(truth, pred, labels=labels, zero_division=0)
        accuracy_score(truth, pred)

    # score() computes both scopes (shared and full); here they hold the same classes.
    ours = per_call(lambda: score(truth, pred, labels, labels), args.repeats) / 2
    theirs = per_call(with_sklearn, args.repeats)
    print(f"{args.cells} cells, {args.classes} classes, load average {os.getloadavg()[0]:.2f}")
    print(f"per scope: dorl.classify.scoring.score {ours * 1e3:.3f} ms (all its rows), "
          f"sklearn precision_recall_fscore_support + accuracy_score {theirs * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
