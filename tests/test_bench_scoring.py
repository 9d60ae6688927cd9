"""The real-data bench scores with the classify stage itself: same cells, same numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dorl.classify.run import classify_from_config
from dorl.featstore import read_features
from dorl.features.encode import FeatureSettings
from simulated_labs import LAB_COLUMNS, held_out_labs
from tests.helpers import synthetic_features

#: Lite0 with AdaBN over 6 cells, reading the tests' 32-px crops at its own 224 px.
TINY_CELL_FEATURES = FeatureSettings(("efficientnet_lite0",), 224, True, 6, 6, False, 64)


def test_bench_and_classify_run_give_the_same_numbers(tiny_cfg, tmp_path):
    from bench_realdata import SOURCE, score_methods
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
        in_domain = row["target"].endswith("(5-fold)")
        target, protocol = (SOURCE, "in_domain") if in_domain else (row["target"],
                                                                     "source_target")
        for metric in ("macro_f1", "accuracy"):
            expected = shared[(shared["classifier"] == row["classifier"])
                              & (shared["protocol"] == protocol)
                              & (shared["target"] == target) & (shared["metric"] == metric)]
            assert len(expected) == 5  # one per source fold
            np.testing.assert_allclose(row[metric], expected["value"].mean(), atol=1e-5)
    assert {r["target"] for r in rows} == {f"{SOURCE} (5-fold)", "lab_b"}


def test_shifted_source_scores_score_every_lab_with_the_configured_classifiers():
    from feature_options import shifted_source_scores
    rng = np.random.default_rng(0)
    classes = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]

    def cells(n):
        labels = np.repeat(classes, n)
        crops = rng.integers(40, 230, (len(labels), 32, 32, 3), dtype=np.uint8)
        for i, label in enumerate(labels):  # each class its own colour, so that it is learnable
            crops[i, 8:24, 8:24, classes.index(label) % 3] = 40 * classes.index(label)
        masks = np.zeros((len(labels), 32, 32), bool)
        masks[:, 6:26, 6:26] = True
        return crops, masks, np.full(len(labels), 60.0), labels

    crops, masks, sides, labels = cells(5)
    held_out = held_out_labs(*cells(6), min_count=2)
    name, cache = "L0 cell AdaBN", {}  # one view per cell; the second call reuses the features
    plain = shifted_source_scores(name, crops, masks, sides, labels, TINY_CELL_FEATURES,
                                  ["logreg"], 0, cache, ("none", "balanced_std_hard"),
                                  held_out=held_out)
    assert plain["adaptation"].tolist() == ["none", "balanced_std_hard"]
    assert plain[list(LAB_COLUMNS)].notna().all().all()
    assert plain["in_domain_f1"].iloc[0] > 0.5
    # classify.params reaches the rule's models: a vanishing C leaves logreg nothing to learn.
    weak = shifted_source_scores(name, crops, masks, sides, labels, TINY_CELL_FEATURES,
                                 ["logreg"], 0, cache, held_out=held_out,
                                 params={"logreg": {"C": 1e-8}})
    assert weak["in_domain_f1"].iloc[0] < plain["in_domain_f1"].iloc[0]
