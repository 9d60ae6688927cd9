"""The real-data bench scores with the classify stage itself: same cells, same numbers."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from dorl.classify.run import classify_from_config
from dorl.featstore import read_features
from tests.conftest import REPO
from tests.helpers import synthetic_features


def test_bench_and_classify_run_give_the_same_numbers(tiny_cfg, tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from bench_realdata import SOURCE, score_methods
    finally:
        sys.path.remove(str(REPO / "bench"))
    path = synthetic_features(tmp_path / "f.h5ad", n_per_domain=80, domains=(SOURCE, "lab_b"))
    fs = read_features(path)
    table = pd.DataFrame({"domain": fs.domains, "label": fs.labels})
    tiny_cfg.classify.classifiers = ["logreg", "knn"]
    tiny_cfg.classify.min_class_count = 3
    rows, _ = score_methods({"dorl": fs.X}, table, tiny_cfg, 0, tmp_path / "bench")

    tiny_cfg.classify.features = {"dorl": str(path)}
    tiny_cfg.classify.protocols = ["source_target", "in_domain"]
    tiny_cfg.classify.adaptations = ["none"]
    tiny_cfg.classify.sources = [SOURCE]
    tiny_cfg.classify.n_folds = 5
    tiny_cfg.classify.save_models = False
    tiny_cfg.classify.out_dir = str(tmp_path / "classify")
    classify_from_config(tiny_cfg)
    results = pd.read_csv(tmp_path / "classify" / "results.csv")
    shared = results[(results["scope"] == "shared") & results["label"].isna()]
    for row in rows:
        target = SOURCE if row["target"].endswith("(5-fold)") else row["target"]
        for metric in ("macro_f1", "accuracy"):
            expected = shared[(shared["classifier"] == row["classifier"])
                              & (shared["target"] == target) & (shared["metric"] == metric)]
            assert len(expected) == 5  # one per source fold
            np.testing.assert_allclose(row[metric], expected["value"].mean(), atol=1e-5)
    assert {r["target"] for r in rows} == {f"{SOURCE} (5-fold)", "lab_b"}
