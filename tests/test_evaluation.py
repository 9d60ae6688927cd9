"""The classify stage end to end on synthetic feature files with domain shifts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dorl.classify.aggregates import in_lab_ceiling
from dorl.classify.model_files import load_model_bundle
from dorl.classify.predict import predict_file
from dorl.classify.reports import markdown_report
from dorl.classify.run import classify_from_config, load_input, run_classification
from dorl.classify.scoring import kept_classes, score
from dorl.classify.settings import ClassifySettings
from dorl.config import load_config
from dorl.featstore import FeatureFileError, FeatureSet, read_features, write_features
from tests.helpers import CLASSES, synthetic_features

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg(tiny_cfg, tmp_path):
    path = synthetic_features(tmp_path / "features.h5ad", n_unknown=4, obsm=True)
    tiny_cfg.classify.features = {"dorl": str(path)}
    tiny_cfg.classify.n_jobs = 1
    return tiny_cfg


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """One full classify run (tiny_cfg's classify settings), shared by the tests that read it."""
    tmp = tmp_path_factory.mktemp("classified")
    path = synthetic_features(tmp / "features.h5ad", n_unknown=4)
    cfg = load_config(REPO / "configs" / "default.yaml", [
        f"run_dir={tmp / 'run'}", "classify.n_folds=2", "classify.classifiers=[logreg,knn]",
        "classify.n_jobs=1", f"classify.features.dorl={path}"])
    return classify_from_config(cfg)


def test_score_separates_shared_and_full_scopes_and_states_the_ceiling():
    truth = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 2)
    pred = np.array(["a"] * 4 + ["b", "b", "a", "a"] + ["a", "b"])
    rows = pd.DataFrame(score(truth, pred, train_classes={"a", "b"}, target_classes=["a", "b",
                                                                                      "c"]))
    overall = rows[rows["label"] == ""].set_index(["scope", "metric"])["value"]
    assert overall["shared", "accuracy"] == pytest.approx(6 / 8)
    assert overall["full", "accuracy"] == pytest.approx(6 / 10)
    assert overall["full", "ceiling_accuracy"] == pytest.approx(8 / 10)
    assert overall["full", "ceiling_macro_f1"] == pytest.approx(2 / 3)
    f1_a, f1_b = 2 * 4 / (2 * 4 + 2 + 0), 2 * 2 / (2 * 2 + 0 + 2)
    assert overall["shared", "macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
    f1_a_full = 2 * 4 / (2 * 4 + 3)
    f1_b_full = 2 * 2 / (2 * 2 + 1 + 2)
    assert overall["full", "macro_f1"] == pytest.approx((f1_a_full + f1_b_full + 0) / 3)
    assert set(rows.loc[rows["label"] != "", "label"]) == {"a", "b", "c"}


def test_kept_classes_drops_rare_classes():
    assert kept_classes(np.array(["a"] * 5 + ["b"] * 4), 5) == ["a"]


def test_unknown_cells_are_left_out_and_counted(tmp_path):
    path = synthetic_features(tmp_path / "f.h5ad", n_per_domain=30, n_unknown=3)
    inp = load_input("x", path)
    assert "unknown" not in set(inp.labels)
    assert inp.n_unknown == {"lab_a": 3, "lab_b": 3, "lab_c": 3}
    assert len(inp.labels) == 81


@pytest.mark.parametrize("seed", range(5))
def test_score_matches_sklearn_s_metrics(seed):
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    truth = rng.choice(["a", "b", "c", "d"], 40)
    pred = rng.choice(["a", "b", "c", "e"], 40)  # "d" never predicted, "e" never true
    rows = pd.DataFrame(score(truth, pred, {"a", "b", "c"}, ["a", "b", "c", "d"]))
    full = rows[rows["scope"] == "full"]
    prec, rec, f1, support = precision_recall_fscore_support(truth, pred, labels=list("abcd"),
                                                             zero_division=0)
    present = np.array(list("abcd"))[support > 0]
    for name, expected in (("precision", prec), ("recall", rec), ("f1", f1)):
        got = full[full["metric"] == name].set_index("label")["value"]
        np.testing.assert_allclose(got[present], expected[support > 0])
    overall = full[full["label"] == ""].set_index("metric")["value"]
    assert overall["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert overall["macro_f1"] == pytest.approx(f1[support > 0].mean())


def test_classify_writes_every_report(classified):
    out = classified
    results = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert {"feature_set", "classifier", "protocol", "source", "target", "fold", "seed", "scope",
            "metric", "label", "value"} <= set(results.columns)
    assert set(results["protocol"]) == {"source_target", "in_domain", "lodo", "few_shot"}
    assert set(results["classifier"]) == {"logreg", "knn"}
    assert set(results["adaptation"]) == {"none", "balanced_std_hard", "coral", "self_training"}
    st = results[results["protocol"] == "source_target"]
    assert (st["source"] != st["target"]).all()
    assert len(st[["source", "target"]].drop_duplicates()) == 6
    indom = results[(results["protocol"] == "in_domain") & (results["metric"] == "macro_f1")
                    & (results["scope"] == "shared")]
    assert indom["value"].mean() > 0.7  # well-separated blobs
    assert set(indom["fold"]) == {0, 1}
    md = (out / "results.md").read_text()
    assert "cross-domain mean" in md and "lab_a → lab_b" in md and "held out lab_c" in md
    assert "## Choosing a classifier per target" in md and "| k=10 |" in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["feature_sets"]["dorl"]["unknown_left_out"] == {"lab_a": 4, "lab_b": 4,
                                                                   "lab_c": 4}
    assert "dorl/self_training/logreg" in summary["headline"]
    assert {c["rule"] for c in summary["classifier_choices"]} == {"source", "agreement", "snd",
                                                                  "oracle"}
    assert {c["shots"] for c in summary["few_shot"]} == {0, 1, 5, 10, 25}
    assert (out / "few_shot.png").stat().st_size > 0
    # adaptations x classifiers x the cross-domain protocols; in-domain counts only in the summary
    assert len(list((out / "confusion").glob("*.png"))) == 4 * 2 * 2
    assert not list((out / "confusion").glob("*__in_domain.png"))
    assert {c["protocol"] for c in summary["confusion_matrices"]} >= {"in_domain", "lodo"}
    assert sorted(p.name for p in (out / "models").iterdir()) == [
        "dorl__knn.skops", "dorl__knn__balanced_std_hard.skops", "dorl__logreg.skops",
        "dorl__logreg__balanced_std_hard.skops"]


def test_adapted_rows_keep_the_in_domain_score_and_few_shot_its_classifiers(cfg, tmp_path):
    cfg.classify.adaptations = ["none", "domain_std", "coral", "self_training"]
    cfg.classify.adaptation_classifiers = ["knn", "svm_rbf"]
    cfg.classify.few_shot.draws = 2
    results, _, _ = run_classification([load_input("x", cfg.classify.features.dorl)],
                                       ClassifySettings.from_config(cfg), tmp_path / "o")
    f1 = results[(results["metric"] == "macro_f1") & (results["scope"] == "shared")]
    within = f1[f1["protocol"] == "in_domain"].pivot_table(
        index=["classifier", "source", "fold"], columns="adaptation", values="value")
    # coral and self-training adapt only to targets outside the training domains.
    for target_side in ("coral", "self_training"):
        np.testing.assert_allclose(within[target_side].dropna(), within["domain_std"].dropna())
    adapted = results[(results["adaptation"] != "none") & (results["protocol"] != "few_shot")]
    assert set(adapted["classifier"]) == {"knn"}  # classifiers ∩ adaptation_classifiers
    few = results[results["protocol"] == "few_shot"]
    assert set(few["classifier"]) == {"logreg"}  # classify.few_shot.classifiers
    assert set(few["adaptation"]) == {"none", "domain_std"}
    assert set(few["shots"]) == {1, 5, 10, 25}
    free = results[(results["scope"] == "label_free") & (results["adaptation"] == "none")]
    assert set(free["metric"]) == {"snd", "agreement"}
    assert free["value"].between(0, np.inf).all()


def test_self_training_rows_lift_a_shifted_target(tmp_path, cfg):
    # Class-conditional shift: the target's class x moves towards y, which per-domain
    # standardisation cannot undo.
    rng = np.random.default_rng(0)
    centres = {"lab_a": {"x": (-2.0, 0.0), "y": (2.0, 0.0)},
               "lab_b": {"x": (-0.3, 0.0), "y": (3.7, 0.0)}}
    rows = [(d, c, rng.normal(xy, 0.7)) for d, by in centres.items() for c, xy in by.items()
            for _ in range(100)]
    obs = pd.DataFrame({"domain": [r[0] for r in rows], "label": [r[1] for r in rows]},
                       index=[f"c{i}" for i in range(len(rows))])
    X = np.stack([r[2] for r in rows]).astype(np.float32)
    path = write_features(tmp_path / "shift.h5ad", FeatureSet(X, obs, {}, {}))
    cfg.classify.classifiers = ["logreg"]
    cfg.classify.protocols = ["source_target"]
    cfg.classify.adaptations = ["none", "self_training"]
    results, _, _ = run_classification([load_input("x", path)],
                                       ClassifySettings.from_config(cfg), tmp_path / "o")
    f1 = results[(results["metric"] == "macro_f1") & (results["scope"] == "shared")]
    mean = f1.groupby("adaptation")["value"].mean()
    assert mean["self_training"] > mean["none"] + 0.03


def test_unknown_adaptation_is_refused(cfg):
    cfg.classify.adaptations = ["none", "tent"]
    with pytest.raises(ValueError, match="unknown \\['tent'\\]"):
        ClassifySettings.from_config(cfg)


def test_same_seed_gives_identical_results_in_parallel(cfg, tmp_path):
    inp = load_input("x", synthetic_features(tmp_path / "s.h5ad", n_per_domain=60))
    cfg.classify.classifiers = ["mlp"]
    cfg.classify.protocols = ["lodo"]
    first = run_classification([inp], ClassifySettings.from_config(cfg), tmp_path / "one")[0]
    cfg.classify.n_jobs = 2
    second = run_classification([inp], ClassifySettings.from_config(cfg), tmp_path / "two")[0]
    pd.testing.assert_frame_equal(first, second)
    cfg.classify.seeds = [1]
    third = run_classification([inp], ClassifySettings.from_config(cfg), tmp_path / "three")[0]
    assert not np.allclose(first["value"], third["value"])


def test_several_feature_sets_and_obsm_in_one_table(cfg):
    path = cfg.classify.features.dorl
    cfg.classify.features = {"dorl": path, "raw": path}
    cfg.classify.obsm = {"raw": "X_raw"}
    cfg.classify.protocols = ["source_target"]
    cfg.classify.adaptations = ["none", "coral"]
    cfg.classify.save_models = False
    cfg.classify.classifiers = ["knn"]
    out = classify_from_config(cfg)
    assert set(pd.read_csv(out / "results.csv")["feature_set"]) == {"dorl", "raw"}
    table = (out / "results.md").read_text()
    assert "| raw | none | KNN |" in table and "| dorl | coral | KNN |" in table


def test_missing_source_class_lowers_the_full_scope_ceiling(tmp_path, cfg):
    path = synthetic_features(tmp_path / "m.h5ad", missing={"lab_a": ("monocyte",)})
    inp = load_input("m", path)
    cfg.classify.protocols = ["source_target"]
    cfg.classify.adaptations = ["none"]  # the ceiling depends on the classes only
    results, _, _ = run_classification([inp], ClassifySettings.from_config(cfg), tmp_path / "out")
    ceiling = results[(results["metric"] == "ceiling_macro_f1") & (results["source"] == "lab_a")]
    assert ceiling["value"].max() == pytest.approx(4 / 5)
    from_b = results[(results["metric"] == "ceiling_macro_f1") & (results["source"] == "lab_b")]
    assert from_b["value"].min() == pytest.approx(1.0)
    shared_labels = results[(results["source"] == "lab_a") & (results["scope"] == "shared")
                            & (results["label"] != "")]["label"]
    assert "monocyte" not in set(shared_labels)


def test_group_aware_splits_never_share_a_group(tmp_path, cfg, monkeypatch):
    from dorl.classify import run as evaluation

    path = synthetic_features(tmp_path / "g.h5ad", n_per_domain=40, groups=True)
    inp = load_input("g", path)
    assert inp.groups is not None
    seen = []
    real = evaluation._fit_predict

    def spy(model, X, y, split, *rest):
        for ev in split.evaluations:
            seen.append(set(inp.groups[split.train]) & set(inp.groups[ev.test]))
        return real(model, X, y, split, *rest)

    monkeypatch.setattr(evaluation, "_fit_predict", spy)
    cfg.classify.adaptations = ["none"]  # every adaptation fits on the same splits
    run_classification([inp], ClassifySettings.from_config(cfg), tmp_path / "out")
    assert seen and not any(seen)


def test_predict_file_applies_a_saved_model(classified, tmp_path):
    model = classified / "models" / "dorl__logreg.skops"
    bundle = load_model_bundle(model)
    assert bundle["feature_dim"] == 12 and bundle["classes"] == sorted(CLASSES)
    assert bundle["feature_signature"] == {"data": "synthetic"}
    new = synthetic_features(tmp_path / "new.h5ad", n_per_domain=40, seed=0)
    csv = predict_file(model, new, tmp_path / "pred.csv")
    pred = pd.read_csv(csv)
    assert len(pred) == 120 and {"cell_id", "path", "predicted", "p_basophil"} <= set(pred.columns)
    assert (pred["label"] == pred["predicted"]).mean() > 0.6


def test_predict_file_refuses_wrong_dimension_and_labels(classified, tmp_path):
    model = classified / "models" / "dorl__knn.skops"
    wrong_dim = synthetic_features(tmp_path / "d.h5ad", n_per_domain=20, dim=7)
    with pytest.raises(FeatureFileError, match="has 7 features but model"):
        predict_file(model, wrong_dim, tmp_path / "p.csv")
    fs = read_features(synthetic_features(tmp_path / "l.h5ad", n_per_domain=20))
    fs.obs["label"] = fs.obs["label"].astype(str).replace("basophil", "blast")
    relabelled = write_features(tmp_path / "l2.h5ad", fs)
    with pytest.raises(FeatureFileError, match=r"labels \['blast'\] outside the label space"):
        predict_file(model, relabelled, tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()


def test_config_errors_name_the_problem(cfg):
    cfg.classify.obsm = {"other": "X_raw"}
    with pytest.raises(FeatureFileError, match=r"classify.obsm names \['other'\]"):
        classify_from_config(cfg)


def test_predict_file_refuses_features_of_another_encoder(classified, tmp_path):
    model = classified / "models" / "dorl__logreg.skops"
    fs = read_features(synthetic_features(tmp_path / "o.h5ad", n_per_domain=20))
    other_lab = dict(fs.uns, signature={"data": "another lab"})  # new cells, same encoder
    predict_file(model, write_features(tmp_path / "lab.h5ad", FeatureSet(fs.X, fs.obs, {},
                                                                         other_lab)),
                 tmp_path / "ok.csv")
    other_run = dict(fs.uns, signature={"data": "synthetic", "config.cae": "other"})
    path = write_features(tmp_path / "run.h5ad", FeatureSet(fs.X, fs.obs, {}, other_run))
    with pytest.raises(FeatureFileError, match=r"other settings.*\['config.cae'\] differ"):
        predict_file(model, path, tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()


def test_kernel_svms_train_on_their_own_cap(cfg, tmp_path):
    inp = load_input("x", cfg.classify.features.dorl)
    cfg.classify.classifiers = ["logreg", "svm_rbf"]
    cfg.classify.protocols = ["lodo"]
    cfg.classify.adaptations = ["none", "self_training"]
    cfg.classify.kernel_svm_max_train = 40
    _, _, timings = run_classification([inp], ClassifySettings.from_config(cfg), tmp_path / "o")
    n_train = timings.groupby("classifier")["n_train"].max()
    assert n_train["svm_rbf"] <= 41 < n_train["logreg"]
    text = markdown_report(*run_classification([inp], ClassifySettings.from_config(cfg),
                                               tmp_path / "p")[:1], [inp],
                           ClassifySettings.from_config(cfg))
    assert "at 40 for the kernel SVMs" in text


def _saved_balanced_predictions(model: Path, weights: str, tmp_path: Path) -> pd.DataFrame:
    """A saved balanced model's predictions for three synthetic labs, after checking what the
    bundle says of itself."""
    bundle = load_model_bundle(model)
    assert bundle["adaptation"] == model.stem.split("__")[-1]
    assert bundle["model"].weights == weights
    pred = pd.read_csv(predict_file(model, synthetic_features(tmp_path / "abc.h5ad",
                                                              n_per_domain=40, seed=0),
                                    tmp_path / "abc.csv"))
    assert (pred["label"] == pred["predicted"]).mean() > 0.6
    return pred


def test_a_saved_balanced_model_predicts_each_lab_on_its_own(classified, tmp_path):
    model = classified / "models" / "dorl__logreg__balanced_std_hard.skops"
    pred = _saved_balanced_predictions(model, "labels", tmp_path)
    np.testing.assert_allclose(pred.filter(like="p_").sum(axis=1), 1.0, atol=1e-5)
    # A lab's statistics are its own: its predictions do not depend on the other labs in the
    # file.
    fs = read_features(tmp_path / "abc.h5ad")
    only_c = fs.domains == "lab_c"
    alone = write_features(tmp_path / "c.h5ad", FeatureSet(fs.X[only_c], fs.obs[only_c], {},
                                                           fs.uns))
    pred_c = pd.read_csv(predict_file(model, alone, tmp_path / "c.csv"))
    np.testing.assert_array_equal(pred_c["predicted"].to_numpy(),
                                  pred[pred["domain"] == "lab_c"]["predicted"].to_numpy())


def test_a_saved_balanced_std_model_weighs_a_lab_by_its_class_scores(cfg, tmp_path):
    cfg.classify.adaptations = ["none", "balanced_std"]
    cfg.classify.protocols = ["source_target"]
    cfg.classify.classifiers = ["logreg"]
    cfg.classify.save_models = True
    cfg.classify.out_dir = str(tmp_path / "classify")
    out = classify_from_config(cfg)
    results = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert set(results["adaptation"]) == {"none", "balanced_std"}
    _saved_balanced_predictions(out / "models" / "dorl__logreg__balanced_std.skops", "scores",
                                tmp_path)


def test_shot_training_routes_the_labelled_target_cells_and_nothing_else(cfg, tmp_path):
    inp = load_input("x", synthetic_features(tmp_path / "s.h5ad", n_per_domain=60))
    cfg.classify.protocols = ["source_target", "few_shot"]
    cfg.classify.adaptations = ["none"]
    cfg.classify.classifiers = ["logreg"]
    cfg.classify.few_shot.shots = [5]
    cfg.classify.few_shot.draws = 2
    cfg.classify.save_models = False

    def results(route):
        cfg.classify.shot_training.source_per_shot = route
        table = run_classification([inp], ClassifySettings.from_config(cfg),
                                   tmp_path / str(route))[0]
        table = table[(table["metric"] == "macro_f1") & (table["scope"] == "shared")]
        key = ["protocol", "source", "target", "shots", "fold"]
        return table.sort_values(key).set_index(key)["value"]

    joined, alone, auto = results("all"), results(0), results("auto")
    cross = joined.index.get_level_values("protocol") == "source_target"
    pd.testing.assert_series_equal(joined[cross], alone[cross])
    assert not np.allclose(joined[~cross], alone[~cross])
    assert len(auto) == len(joined)


def test_the_report_reads_each_cross_lab_score_against_the_target_s_in_lab_ceiling(cfg, tmp_path):
    inp = load_input("x", synthetic_features(tmp_path / "s.h5ad", n_per_domain=60))
    cfg.classify.protocols = ["source_target", "in_domain"]
    cfg.classify.sources = ["lab_a"]
    cfg.classify.adaptations = ["none"]
    cfg.classify.classifiers = ["logreg"]
    settings = ClassifySettings.from_config(cfg)
    results, _, _ = run_classification([inp], settings, tmp_path / "out")
    table = in_lab_ceiling(results)
    assert sorted(table["target"]) == ["lab_b", "lab_c"] and set(table["source"]) == {"lab_a"}
    sel = results[(results["scope"] == "shared") & (results["metric"] == "macro_f1")
                  & (results["label"] == "")]
    for row in table.itertuples():
        own = sel[(sel["protocol"] == "in_domain") & (sel["target"] == row.target)]
        cross = sel[(sel["protocol"] == "source_target") & (sel["target"] == row.target)]
        assert row.in_lab == pytest.approx(own["value"].mean())
        assert row.kept == pytest.approx(cross["value"].mean() / own["value"].mean())
    assert "## Cross-lab against the in-lab ceiling" in markdown_report(results, [inp], settings)


def test_target_labels_are_read_without_case_or_spaces_and_repeats_that_agree_pass(tmp_path):
    from dorl.classify.inputs import read_target_labels

    path = tmp_path / "labels.csv"
    path.write_text("path,label\na.png,Neutrophil \nb.png, basophil\nb.png,BASOPHIL\n"
                    "c.png,unknown\n")
    assert read_target_labels(path, ("basophil", "neutrophil")) == {
        "a.png": "neutrophil", "b.png": "basophil", "c.png": "unknown"}


def test_target_labels_match_cells_given_by_absolute_or_other_relative_paths():
    from dorl.classify.inputs import match_cell_paths

    stored = np.array(["lab/mono/a.png", "../../shared/lisc/b.png", "c.png", "x/c.png"])
    rows = {"/data/run/lab/mono/a.png": "monocyte", "/work/shared/lisc/b.png": "basophil",
            "elsewhere/x/c.png": "neutrophil", "c.png": "eosinophil", "/nowhere/z.png": "monocyte"}
    by_cell, unmatched = match_cell_paths(stored, rows)
    assert by_cell == {"lab/mono/a.png": "monocyte", "../../shared/lisc/b.png": "basophil",
                       "x/c.png": "neutrophil", "c.png": "eosinophil"}
    assert unmatched == ["/nowhere/z.png"]
    for rows in ({"c.png": "monocyte", "/abs/c.png": "basophil"},
                 {"/abs/c.png": "basophil", "c.png": "monocyte"}):  # in either order
        with pytest.raises(FeatureFileError, match="two different labels"):
            match_cell_paths(stored, rows)


def test_predict_file_refuses_features_of_another_trained_encoder(cfg, tmp_path):
    """Two runs with the same settings train two encoders on other cells: the signature's
    config parts agree, the encoders' hashes do not."""
    fs = read_features(synthetic_features(tmp_path / "s.h5ad", n_per_domain=20))

    def with_encoder(name, sha):
        uns = dict(fs.uns, hashes={"cae_encoder": sha})
        return write_features(tmp_path / name, FeatureSet(fs.X, fs.obs, {}, uns))

    cfg.classify.features = {"dorl": str(with_encoder("run.h5ad", "a" * 64))}
    cfg.classify.protocols = ["source_target"]
    cfg.classify.adaptations = ["none"]
    cfg.classify.classifiers = ["logreg"]
    cfg.classify.out_dir = str(tmp_path / "classify")
    model = classify_from_config(cfg) / "models" / "dorl__logreg.skops"
    predict_file(model, with_encoder("applied.h5ad", "a" * 64), tmp_path / "ok.csv")
    with pytest.raises(FeatureFileError, match=r"another trained encoder \(sha256 bbbbbbbbbbbb\)"):
        predict_file(model, with_encoder("other.h5ad", "b" * 64), tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()
