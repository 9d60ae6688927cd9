"""The classifier registry: every built-in model fits, custom models load by import path."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline

from dorl.classify.registry import BUILTINS, ClassifierError, build_classifier, display_name


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = np.repeat(np.array(["monocyte", "neutrophil", "basophil"]), [60, 30, 10])
    centres = {"monocyte": 0.0, "neutrophil": 3.0, "basophil": -3.0}
    X = rng.normal(0, 1, (100, 6)) + np.array([centres[c] for c in y])[:, None]
    return X.astype(np.float32), y


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_builtin_fits_string_labels(name, data):
    X, y = data
    model = build_classifier(name, seed=0).fit(X, y)
    assert list(model.classes_) == ["basophil", "monocyte", "neutrophil"]
    assert (model.predict(X) == y).mean() > 0.85
    assert isinstance(build_classifier(name, 0), Pipeline) == BUILTINS[name].scale


def test_seed_and_overrides_reach_the_model():
    rf = build_classifier("rf", seed=7, params={"n_estimators": 5})
    assert rf.get_params()["random_state"] == 7 and rf.n_estimators == 5
    assert rf.class_weight == "balanced"
    xgb = build_classifier("xgboost", seed=3, params={"class_weight": None})
    assert xgb.class_weight is None and xgb.estimator.random_state == 3
    svm = build_classifier("svm_rbf", seed=1)
    assert svm.named_steps["model"].cache_size >= 500


def test_custom_classifier_by_import_path(data):
    X, y = data
    custom = {"trees": {"class": "sklearn.ensemble.ExtraTreesClassifier",
                        "params": {"n_estimators": 10}, "scale": True, "encode_labels": True}}
    model = build_classifier("trees", seed=4, custom=custom)
    assert isinstance(model, Pipeline)
    inner = model.named_steps["model"].estimator
    assert inner.random_state == 4 and inner.n_estimators == 10
    assert is_classifier(model.fit(X, y)) and display_name("trees") == "trees"


@pytest.mark.parametrize("custom, message", [
    ({"m": {"class": "sklearn.nowhere.Model"}}, "cannot import"),
    ({"m": {"class": "Model"}}, "not a dotted import path"),
    ({"m": {"class": "sklearn.preprocessing.StandardScaler"}}, "not a scikit-learn classifier"),
    ({"m": {"class": "sklearn.svm.SVC", "params": {"kernal": "rbf"}}}, "bad parameters"),
    ({"m": {"klass": "sklearn.svm.SVC"}}, "needs `class`"),
])
def test_bad_custom_entries_are_explained(custom, message):
    with pytest.raises(ClassifierError, match=message):
        build_classifier("m", 0, custom=custom)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ClassifierError, match="unknown classifier 'svm'.*svm_rbf"):
        build_classifier("svm", 0)
