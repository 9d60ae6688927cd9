"""Real labs in a blood smear's class mix: what a lab's class mix costs, and what `balanced_std`
gives back.

LISC is class-balanced and Zheng-2018 nearly so, while a lab's smears hold mostly neutrophils
and lymphocytes. This bench redraws each target in the mix of a normal adult differential
(``simulated_labs.class_mix_rows``; which cells of each class is drawn with each seed)
and encodes the redrawn cells as a lab of their own: its own AdaBN statistics and its own
standardisation, as ``dorl embed`` treats a lab. The target's labels choose which cells form
the redrawn lab, and they score it; no model or setting reads them. Classifiers train on all
source cells (the default cell features: Lite0, AdaBN, four rotations); each target is scored
with each of ``--adaptations`` (default: ``none`` and the two balanced ones).

It reads the manifest and LoRA-SAM segmentation that ``bench/bench_realdata.py`` cached in its
``--out`` folder:

    python bench/bench_class_mix.py --bench-dir runs/rd200 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from feature_options import encode_normalised
from sklearn.metrics import f1_score

from dorl.classify.adaptation import ADAPTATIONS, SelfTraining, TargetAdapter
from dorl.classify.registry import build_classifier
from dorl.classify.scoring import kept_classes
from dorl.config import load_config
from dorl.data.manifest import load_manifest
from dorl.domain_scaler import DomainStandardScaler
from dorl.features.crops import cell_crops
from dorl.features.encode import FeatureSettings
from dorl.sam.segmentation import Segmentation
from simulated_labs import DIFFERENTIAL, class_mix_rows

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_class_mix")
SOURCE = "acevedo20"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench-dir", default=str(REPO / "runs" / "rd200"),
                    help="the --out folder of a bench_realdata.py run (manifest.csv, sam_lora/)")
    ap.add_argument("--config", default=str(REPO / "configs" / "realdata.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--classifiers", nargs="+",
                    default=["logreg", "svm_linear", "svm_rbf", "knn", "mlp", "rf"])
    ap.add_argument("--adaptations", nargs="+", choices=ADAPTATIONS,
                    default=["none", "balanced_std", "balanced_std_hard"])
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = load_config(args.config, args.overrides)
    bench = Path(args.bench_dir)
    manifest = load_manifest(bench / "manifest.csv", str(cfg.data.label_space))
    seg = Segmentation.load(bench / "sam_lora" / "segmentation.h5", lazy=True)
    table = manifest.table
    domains = table["domain"].astype(str).to_numpy()
    labels = table["label"].astype(str).to_numpy()
    settings = FeatureSettings.from_config(cfg)
    min_count = int(cfg.classify.min_class_count)
    src = np.flatnonzero(domains == SOURCE)
    rows_out = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        rows, lab = [src], [np.full(len(src), SOURCE, object)]
        for target in sorted(set(domains) - {SOURCE}):
            own = np.flatnonzero(domains == target)
            picked = class_mix_rows(own, labels[own], DIFFERENTIAL, min_count, rng)
            rows.append(picked)
            lab.append(np.full(len(picked), f"{target} in a smear's mix", object))
        rows, lab = np.concatenate(rows), np.concatenate(lab).astype(str)
        t0 = time.perf_counter()
        crops, _ = cell_crops(manifest, seg, settings.crop_size, rows, progress=False)
        X = encode_normalised(crops, lab, settings)[0]
        X = np.concatenate([X[e] for e in settings.encoders], axis=1)
        logger.info("seed %d: %d cells encoded in %.1f s; %s", seed, len(rows),
                    time.perf_counter() - t0,
                    pd.crosstab(lab, labels[rows]).to_dict(orient="index"))
        Z = DomainStandardScaler().fit(X, domains=lab).transform(X, domains=lab)
        y = labels[rows]
        train = lab == SOURCE
        for name in args.classifiers:
            fitted = build_classifier(name, seed).fit(Z[train], y[train])
            adapters = {a: TargetAdapter(a, build_classifier(name, seed), fitted, Z[train],
                                         y[train], SelfTraining()) for a in args.adaptations}
            for target in sorted(set(lab) - {SOURCE}):
                test = lab == target
                kept = [c for c in kept_classes(y[test], min_count) if c in set(y[train])]
                scored = test & np.isin(y, kept)
                for adaptation, adapter in adapters.items():
                    predicted = np.asarray(adapter.model_for(Z[test]).predict(Z[test])).astype(str)
                    rows_out.append({
                        "seed": seed, "classifier": name, "target": target,
                        "adaptation": adaptation, "cells": int(test.sum()),
                        "macro_f1": f1_score(y[scored], predicted[np.isin(y[test], kept)],
                                             labels=kept, average="macro")})
    frame = pd.DataFrame(rows_out)
    # Every classifier is printed; bench_realdata's headline reads the one best in-domain.
    table_out = frame.groupby(["target", "classifier", "adaptation"])["macro_f1"].agg(
        ["mean", "std"]).unstack("adaptation")
    print(table_out.round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
