"""Saved classifier bundles: every built-in classifier and the adapted models load from their
skops file without running code, and predict as before."""

import numpy as np
import pytest

from dorl.classify.adaptation import fit_class_balanced
from dorl.classify.model_files import ModelFileError, load_model_bundle, save_model_bundle
from dorl.classify.registry import BUILTINS, build_classifier


def _cells(seed=0):
    rng = np.random.default_rng(seed)
    y = np.array(["neutrophil", "lymphocyte", "monocyte"])[rng.integers(0, 3, 150)]
    X = rng.normal(size=(150, 6)).astype(np.float32) + (y == "monocyte")[:, None] * 2.0
    return X, y


@pytest.mark.parametrize("name", list(BUILTINS))
def test_every_builtin_classifier_round_trips(name, tmp_path):
    X, y = _cells()
    model = build_classifier(name, 0).fit(X, y)
    path = save_model_bundle(tmp_path / f"{name}.skops",
                             {"model": model, "classes": sorted(set(y)), "feature_dim": 6})
    bundle = load_model_bundle(path)
    np.testing.assert_array_equal(bundle["model"].predict(X), model.predict(X))
    assert bundle["feature_dim"] == 6


def test_an_adapted_model_round_trips(tmp_path):
    X, y = _cells()
    model = fit_class_balanced(build_classifier("logreg", 0), X, y, "labels")
    bundle = load_model_bundle(save_model_bundle(tmp_path / "m.skops", {"model": model}))
    np.testing.assert_array_equal(bundle["model"].predict(X + 1.0), model.predict(X + 1.0))


def test_a_file_without_a_bundle_is_refused(tmp_path):
    path = save_model_bundle(tmp_path / "m.skops", {"not": "a model"})
    with pytest.raises(ModelFileError, match="no model bundle"):
        load_model_bundle(path)
