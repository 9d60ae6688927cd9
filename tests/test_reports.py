"""Report tables: fold/seed statistics, separate in-domain and cross-domain means, files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dorl.classify.aggregates import cell_stats, classifier_choices, few_shot_curve, pooled_mean
from dorl.classify.reports import markdown_report, pair_table, write_reports
from dorl.classify.settings import ClassifySettings
from dorl.config import load_config


def results_frame():
    """Hand-made results: one classifier, domains a/b, two folds, macro-F1 and a ceiling."""
    rows = []
    values = {("in_domain", "a", "a"): (0.9, 0.8), ("in_domain", "b", "b"): (0.7, 0.7),
              ("source_target", "a", "b"): (0.4, 0.2), ("source_target", "b", "a"): (0.3, 0.3),
              ("lodo", "b", "a"): (0.5, 0.5), ("lodo", "a", "b"): (0.6, 0.6)}
    for (protocol, source, target), per_fold in values.items():
        for fold, v in enumerate(per_fold):
            for scope in ("shared", "full"):
                base = {"feature_set": "dorl", "adaptation": "none", "classifier": "logreg",
                        "protocol": protocol, "source": source, "target": target, "shots": 0,
                        "fold": fold, "seed": 0,
                        "scope": scope, "label": "", "n_test": 10}
                rows.append({**base, "metric": "macro_f1", "value": v})
                rows.append({**base, "metric": "accuracy", "value": v})
                if scope == "full":
                    ceiling = 0.75 if (source, target) == ("a", "b") else 1.0
                    rows += [{**base, "metric": "ceiling_macro_f1", "value": ceiling},
                             {**base, "metric": "ceiling_accuracy", "value": ceiling}]
            rows.append({**base, "scope": "shared", "metric": "f1", "label": "x", "value": 1.0})
    return pd.DataFrame(rows)


def test_cell_stats_average_over_folds_without_per_class_rows():
    stats = cell_stats(results_frame())
    cell = stats.loc[("dorl", "none", "logreg", "source_target", "a", "b", 0, "shared",
                      "macro_f1")]
    assert cell["mean"] == pytest.approx(0.3) and cell["n"] == 2
    assert cell["std"] == pytest.approx(np.std([0.4, 0.2], ddof=1))
    assert "f1" not in stats.index.get_level_values("metric")


def test_cross_domain_mean_leaves_in_domain_cells_out():
    cross = pooled_mean(results_frame(), ("source_target",), "shared", "macro_f1")
    within = pooled_mean(results_frame(), ("in_domain",), "shared", "macro_f1")
    assert cross["mean"].item() == pytest.approx((0.3 + 0.3) / 2)
    assert cross["std"].item() == pytest.approx(np.std([(0.4 + 0.3) / 2, (0.2 + 0.3) / 2],
                                                       ddof=1))
    assert within["mean"].item() == pytest.approx((0.85 + 0.7) / 2)


def test_pair_table_layout():
    table = pair_table(results_frame(), "shared", "macro_f1").splitlines()
    assert table[0] == ("| features | adaptation | classifier | a → a | a → b | b → a | b → b | "
                        "in-domain mean | **cross-domain mean** |")
    assert table[2] == ("| dorl | none | Logistic regression | 85.0 ± 7.1 | 30.0 ± 14.1 | "
                        "30.0 ± 0.0 | 70.0 ± 0.0 | 77.5 ± 3.5 | **30.0 ± 7.1** |")


def test_markdown_report_states_ceilings_and_lodo(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    text = markdown_report(results_frame(), [], ClassifySettings.from_config(cfg))
    assert "| dorl | source_target | a → b | 75.0 | 75.0 |" in text
    assert "b → a |" not in text.split("## Ceilings")[1]
    assert "held out a" in text and "Logistic regression (full)" in text


def test_write_reports_files(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    confusions = {("dorl", "none", "logreg", "source_target", "a", "b"): (
        ["x", "y"], np.array([[3, 1], [0, 4]]))}
    timings = pd.DataFrame([{"feature_set": "dorl", "adaptation": "none", "classifier": "logreg",
                             "fit_s": 1.0, "predict_s": 0.5}])
    table = write_reports(tmp_path / "out", results_frame(), confusions, timings, [],
                          ClassifySettings.from_config(cfg), 2.0)
    assert "cross-domain mean" in table
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    head = summary["headline"]["dorl/none/logreg"]
    assert head["cross_domain_macro_f1_shared"]["mean"] == pytest.approx(0.3)
    assert head["lodo_macro_f1_full"]["mean"] == pytest.approx(0.55)
    assert summary["confusion_matrices"][0]["counts"] == [[3, 1], [0, 4]]
    png = tmp_path / "out" / "confusion" / "dorl__none__logreg__source_target.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    csv = pd.read_csv(tmp_path / "out" / "results.csv", keep_default_na=False)
    assert len(csv) == len(results_frame())


def _row(classifier, protocol, target, metric, value, scope="shared", shots=0, fold=0):
    return {"feature_set": "dorl", "adaptation": "none", "classifier": classifier,
            "protocol": protocol, "source": "a", "target": target, "shots": shots, "fold": fold,
            "seed": 0, "scope": scope, "metric": metric, "label": "", "value": value,
            "n_test": 10}


def test_each_rule_picks_its_own_classifier():
    rows = []
    # rf is best in-domain, svm agrees most with the vote, knn has the highest SND, and logreg
    # is best on the target: four rules, four picks.
    for clf, within, target, agreement, snd in (("rf", 0.9, 0.4, 0.5, 1.0),
                                                ("svm_rbf", 0.8, 0.5, 0.9, 1.1),
                                                ("knn", 0.7, 0.6, 0.6, 2.0),
                                                ("logreg", 0.6, 0.7, 0.7, 1.2)):
        rows += [_row(clf, "in_domain", "a", "macro_f1", within),
                 _row(clf, "source_target", "b", "macro_f1", target),
                 _row(clf, "source_target", "b", "agreement", agreement, "label_free"),
                 _row(clf, "source_target", "b", "snd", snd, "label_free")]
    picks = classifier_choices(pd.DataFrame(rows)).set_index("rule")
    assert picks["classifier"].to_dict() == {"source": "rf", "agreement": "svm_rbf",
                                             "snd": "knn", "oracle": "logreg"}
    assert picks.loc["agreement", "mean"] == pytest.approx(0.5)  # scored on target labels


def test_few_shot_curve_starts_at_the_cross_domain_score():
    rows = [_row("logreg", "source_target", "b", "macro_f1", 0.5)]
    for draw, (one, five) in enumerate(((0.6, 0.8), (0.7, 0.9))):
        rows += [_row("logreg", "few_shot", "b", "macro_f1", one, shots=1, fold=draw),
                 _row("logreg", "few_shot", "b", "macro_f1", five, shots=5, fold=draw)]
    curve = few_shot_curve(pd.DataFrame(rows)).set_index("shots")
    assert curve["mean"].to_dict() == pytest.approx({0: 0.5, 1: 0.65, 5: 0.85})
    assert curve.loc[5, "n"] == 2
