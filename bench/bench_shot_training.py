"""Labels that pay: how a target's k labelled cells per class should train beside the source's.

Reads the features ``bench/bench_encoder_training.py`` saved for a variant
(``<bench-dir>/<variant>/features.npy``, rows of ``<bench-dir>/manifest.csv``). For each target
lab, k labelled cells per class are drawn by dorl's own ``few_shot`` protocol (group-aware:
near-duplicates of a drawn cell are never scored), and each route of
``classify.shot_training`` trains a logistic regression:

  all       the source joined with the shots (every source cell)
  4, 1      for each class, 4 or 1 source cells per shot (the shots weigh 1/5 or 1/2)
  0         the shots alone
  auto      per draw, the ratio whose cross-validated macro-F1 within the shots is highest
            (ties within 0.01 to the earliest of all, 4, 1, 0): never the scored cells

Each is scored (macro-F1, the classes shared with the source) on the target's other cells,
beside the target's in-lab ceiling (a 5-fold logistic regression trained inside it). Also
printed: each fixed route's cross-validated score within the shots, the figure ``auto`` reads.

    python bench/bench_shot_training.py --bench-dir runs/encoder_bench_o --variant contrastive
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bench_encoder_training import in_lab_ceiling, slug

from dorl.atomic import write_text_atomic
from dorl.classify.protocols import make_splits
from dorl.classify.registry import build_classifier
from dorl.classify.scoring import kept_classes, score
from dorl.classify.shots import cross_validated, pick_ratio, training_rows
from dorl.data.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_shot_training")
SOURCE = "acevedo20"
#: The fixed routes (source cells per class per shot; None: all) in the tie order of ``auto``.
ROUTES = {"all": None, "4": 4.0, "1": 1.0, "0": 0.0}
MIN_CLASS_COUNT = 5


def macro_f1(truth, predicted, train_classes, target_classes) -> float:
    rows = score(truth, predicted, train_classes, target_classes)
    return next(r["value"] for r in rows if r["scope"] == "shared" and r["metric"] == "macro_f1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench-dir", default=str(REPO / "runs" / "encoder_bench_o"))
    ap.add_argument("--variant", default="contrastive")
    ap.add_argument("--targets", nargs="+", default=["lisc", "zheng2018"])
    ap.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    bench = Path(args.bench_dir)
    table = load_manifest(bench / "manifest.csv", "mature5").table
    X = np.load(bench / slug(args.variant) / "features.npy")
    labels = table["label"].astype(str).to_numpy()
    domains = table["domain"].astype(str).to_numpy()
    groups = table["group"].astype(str).to_numpy() if "group" in table else None
    keep = np.isin(domains, [SOURCE, *args.targets])
    rows_of = np.flatnonzero(keep)
    X, labels, domains = X[rows_of], labels[rows_of], domains[rows_of]
    groups = None if groups is None else groups[rows_of]
    out, t0 = [], time.perf_counter()
    for seed in args.seeds:
        model = build_classifier("logreg", seed)
        splits = make_splits(labels, domains, ["few_shot"], 5, seed, groups, sources=[SOURCE],
                             shots=args.shots, draws=args.draws)
        for split in splits:
            (ev,) = split.evaluations
            shots = split.labelled_target
            source = np.setdiff1d(split.train, shots)
            target_classes = kept_classes(labels[domains == ev.target], MIN_CLASS_COUNT)
            cv = cross_validated(model, X, labels, source, shots, list(ROUTES.values()), seed)
            auto = pick_ratio(cv, list(ROUTES.values()))  # what `auto` chooses from them
            for route, ratio in [*ROUTES.items(), ("auto", auto)]:
                train = training_rows(source, shots, labels, ratio,
                                      np.random.default_rng([seed, split.fold]))
                fitted = build_classifier("logreg", seed).fit(X[train], labels[train])
                predicted = np.asarray(fitted.predict(X[ev.test])).astype(str)
                out.append({"seed": seed, "target": ev.target, "k": ev.shots,
                            "draw": split.fold, "route": route,
                            "ratio": "all" if ratio is None else ratio,
                            "macro_f1": macro_f1(labels[ev.test], predicted,
                                                 set(labels[train]), target_classes),
                            "cv_within_shots": np.nan if cv is None or route == "auto"
                            else cv[ratio]})
        logger.info("seed %d done, %.0f s", seed, time.perf_counter() - t0)
    frame = pd.DataFrame(out)
    ceiling = {t: float(np.mean([in_lab_ceiling(X, table.iloc[rows_of].reset_index(drop=True),
                                                 t, seed) for seed in args.seeds]))
               for t in args.targets}
    text = render(frame, ceiling, args.variant, time.perf_counter() - t0)
    write_text_atomic(bench / slug(args.variant) / "shot_training.md", text)
    write_text_atomic(bench / slug(args.variant) / "shot_training.json",
                      json.dumps({"rows": out, "in_lab": ceiling}, default=float))
    print(text)
    return 0


def render(frame: pd.DataFrame, ceiling: dict, variant: str, seconds: float) -> str:
    """Scored macro-F1 per route (mean ± std over draws and seeds), the in-lab ceiling, the
    cross-validated score within the shots, and how often ``auto`` chose each ratio."""
    order = [*ROUTES, "auto"]
    lines = [f"Variant: {variant}; logistic regression; {seconds:.0f} s.", "",
             "| target | k | " + " | ".join(f"route {r}" for r in order) + " | in-lab |",
             "|---|---|" + "---|" * (len(order) + 1)]
    by = frame.groupby(["target", "k", "route"])["macro_f1"]
    mean, std = by.mean(), by.std()
    for (target, k), _ in frame.groupby(["target", "k"]):
        cells = [f"{mean[(target, k, r)]:.3f} ± {std[(target, k, r)]:.3f}" for r in order]
        lines.append(f"| {target} | {k} | " + " | ".join(cells) + f" | {ceiling[target]:.3f} |")
    lines += ["", "Cross-validated macro-F1 within the shots (what `auto` reads):", "",
              "| target | k | " + " | ".join(f"route {r}" for r in ROUTES) + " |",
              "|---|---|" + "---|" * len(ROUTES)]
    cv = frame[frame["route"] != "auto"].groupby(["target", "k", "route"])["cv_within_shots"] \
        .mean()
    for (target, k), _ in frame.groupby(["target", "k"]):
        lines.append(f"| {target} | {k} | "
                     + " | ".join(f"{cv[(target, k, r)]:.3f}" for r in ROUTES) + " |")
    chosen = frame[frame["route"] == "auto"].groupby(["target", "k"])["ratio"].agg(
        lambda r: {k: int(v) for k, v in pd.Series(r.astype(str)).value_counts().items()})
    lines += ["", "Ratios `auto` chose (count of draws x seeds):", ""]
    lines += [f"- {target}, k={k}: {counts}" for (target, k), counts in chosen.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
