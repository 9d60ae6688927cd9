"""Label-free target adaptation and the label-free classifier-choice scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from dorl.classify.adaptation import (
    BALANCED,
    ClassBalancedModel,
    SelfTraining,
    TargetAdapter,
    class_balanced_standardise,
    class_scores,
    coral_align,
    pseudo_labels,
    self_train,
)
from dorl.classify.label_free_scores import soft_neighbourhood_density, vote_agreement


def _blobs(rng, centres, n, sd):
    y = np.repeat(np.arange(len(centres)), n).astype(str)
    return np.concatenate([rng.normal(c, sd, (n, 2)) for c in centres]), y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_self_training_improves_a_shifted_toy_domain(seed):
    rng = np.random.default_rng(seed)
    Xs, ys = _blobs(rng, [(-2, 0), (2, 0)], 100, 0.7)
    # The target's classes are shifted across the source's decision boundary.
    Xt, yt = _blobs(rng, [(-0.3, 0), (3.7, 0)], 200, 0.7)
    plain = LogisticRegression().fit(Xs, ys).score(Xt, yt)
    adapted = self_train(LogisticRegression(), Xs, ys, Xt, SelfTraining()).score(Xt, yt)
    assert adapted > plain + 0.03


def _rotated_target(rng, degrees, n=200, sd=0.7):
    """Two classes at (-2, 0) and (2, 0) turned by ``degrees``: a shift that per-domain centring
    cannot undo, with the source's boundary (x = 0) cutting through both classes."""
    X, y = _blobs(rng, [(-2, 0), (2, 0)], n, sd)
    t = np.deg2rad(degrees)
    return X @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]), y


def _adapter(name, Xs, ys, fitted):
    return TargetAdapter(name, LogisticRegression(), fitted, Xs, ys, SelfTraining())


def test_target_adapter_refits_only_for_the_self_training_adaptations():
    rng = np.random.default_rng(0)
    Xs, ys = _blobs(rng, [(-2, 0), (2, 0)], 100, 0.7)
    Xt, _ = _rotated_target(rng, 75)
    fitted = LogisticRegression().fit(Xs, ys)
    for feature_side in ("none", "domain_std", "coral"):  # the balanced ones: tests below
        assert _adapter(feature_side, Xs, ys, fitted).model_for(Xt) is fitted
    assert _adapter("self_training", Xs, ys, fitted).model_for(Xt[:0]) is fitted
    model = _adapter("self_training", Xs, ys, fitted).model_for(Xt)
    direct = self_train(LogisticRegression(), Xs, ys, Xt, SelfTraining(), fitted=fitted)
    np.testing.assert_allclose(model.coef_, direct.coef_)


def test_self_training_never_reads_target_labels():
    rng = np.random.default_rng(0)
    Xs, ys = _blobs(rng, [(-2, 0), (2, 0)], 50, 0.7)
    Xt, _ = _blobs(rng, [(-0.3, 0), (3.7, 0)], 50, 0.7)
    first = self_train(LogisticRegression(), Xs, ys, Xt, SelfTraining())
    again = self_train(LogisticRegression(), Xs, ys, Xt.copy(), SelfTraining())
    np.testing.assert_allclose(first.coef_, again.coef_)  # the signature has no target labels


def test_pseudo_labels_take_the_same_share_of_every_predicted_class():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4],
                       [0.45, 0.55], [0.3, 0.7]])
    rows, labels = pseudo_labels(scores, np.array(["a", "b"]), 0.5, 0.0)
    # 4 cells predicted a (the 2 surest kept), 2 predicted b (the surest kept).
    assert rows.tolist() == [0, 1, 5] and labels.tolist() == ["a", "a", "b"]
    rows, _ = pseudo_labels(scores, np.array(["a", "b"]), 1.0, 0.65)
    assert rows.tolist() == [0, 1, 2, 5]


def test_coral_maps_the_target_to_the_source_moments():
    rng = np.random.default_rng(0)
    source = rng.normal(0, 1, (4000, 3)) @ np.array([[2, 0, 0], [1, 1, 0], [0, 0, 0.5]])
    target = rng.normal(3, 1, (4000, 3)) * np.array([0.5, 3, 1])
    aligned = coral_align(target, source, reg=1e-6)
    np.testing.assert_allclose(aligned.mean(axis=0), source.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(np.cov(aligned, rowvar=False), np.cov(source, rowvar=False),
                               atol=1e-3)


def test_coral_is_stable_with_fewer_cells_than_features():
    rng = np.random.default_rng(0)
    aligned = coral_align(rng.normal(size=(20, 64)), rng.normal(size=(30, 64)))
    assert aligned.shape == (20, 64) and np.isfinite(aligned).all()


@pytest.mark.parametrize("n_target, n_source", [(20, 30), (20, 300), (300, 200)])
def test_coral_equals_the_dense_matrix_formula(n_target, n_source):
    """The low-rank form gives what (C_t + I)^-1/2 (C_s + I)^1/2 built as (d, d) matrices gives,
    with fewer and with more cells than features."""
    def power(X, p):
        values, vectors = np.linalg.eigh(np.cov(X, rowvar=False) + np.eye(X.shape[1]))
        return (vectors * values ** p) @ vectors.T

    rng = np.random.default_rng(1)
    target = rng.normal(2, 1, (n_target, 64)) * rng.uniform(0.5, 2, 64)
    source = rng.normal(size=(n_source, 64)) @ rng.normal(size=(64, 64)) * 0.3
    dense = (target - target.mean(0)) @ power(target, -0.5) @ power(source, 0.5) + source.mean(0)
    np.testing.assert_allclose(coral_align(target, source), dense, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", [LogisticRegression(),
                                   make_pipeline(StandardScaler(), LinearSVC())])
def test_class_scores_are_distributions_in_class_order(model):
    rng = np.random.default_rng(0)
    X, y = _blobs(rng, [(-2, 0), (2, 0), (0, 3)], 30, 0.7)
    model.fit(X, y)
    scores = class_scores(model, X)
    assert scores.shape == (90, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    np.testing.assert_array_equal(model.classes_[scores.argmax(axis=1)], model.predict(X))


def test_snd_prefers_predictions_that_form_tight_groups():
    rng = np.random.default_rng(0)
    grouped = np.repeat(np.eye(4), 50, axis=0) * 0.9 + 0.025
    scattered = rng.dirichlet(np.ones(4), size=200)
    assert soft_neighbourhood_density(grouped) > soft_neighbourhood_density(scattered)
    big = rng.dirichlet(np.ones(4), size=5000)
    assert np.isfinite(soft_neighbourhood_density(big, max_cells=500))


def test_vote_agreement_against_the_other_classifiers():
    votes = vote_agreement({"a": np.array([0, 0, 1, 1]), "b": np.array([0, 0, 1, 0]),
                            "c": np.array([0, 1, 1, 1])})
    # a vs vote(b, c): ties go to the lowest code -> [0, 0, 1, 0]: 3 of 4 agree.
    assert votes == {"a": 0.75, "b": 0.75, "c": 0.5}
    assert np.isnan(vote_agreement({"a": np.array([0, 1])})["a"])


def test_pseudo_labels_respect_a_limit_in_proportion():
    scores = np.array([[0.9, 0.1]] * 6 + [[0.2, 0.8]] * 2)
    rows, labels = pseudo_labels(scores, np.array(["a", "b"]), 1.0, 0.0, limit=4)
    assert len(rows) == 4 and labels.tolist().count("a") == 3 and labels.tolist().count("b") == 1


def _standardised(X):
    return (X - X.mean(axis=0)) / X.std(axis=0)


def test_class_balanced_statistics_weigh_every_class_the_same():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal((-2, 5), 0.5, (90, 2)), rng.normal((2, 5), 0.5, (10, 2))])
    onehot = np.repeat(np.eye(2), [90, 10], axis=0)
    Z = class_balanced_standardise(X, onehot)
    assert Z.dtype == np.float32
    # The two class means sit symmetrically about zero, whatever their counts.
    np.testing.assert_allclose(Z[:90].mean(axis=0)[0], -Z[90:].mean(axis=0)[0], rtol=0.05)
    # A class without weight is left out of the mixture instead of dividing by zero.
    empty = np.concatenate([onehot, np.zeros((100, 1))], axis=1)
    np.testing.assert_allclose(class_balanced_standardise(X, empty), Z, atol=1e-6)


@pytest.mark.parametrize("adaptation", list(BALANCED))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_std_undoes_a_lab_s_class_mix(seed, adaptation):
    """A target lab with the source's classes but 9 cells of one class to 1 of the other,
    standardised with its own statistics, moves every cell towards the rare class."""
    rng = np.random.default_rng(seed)
    Xs, ys = _blobs(rng, [(-2, 0), (2, 0)], 200, 1.0)
    Xs = _standardised(Xs)
    Xt = np.concatenate([rng.normal((-2, 0), 1.0, (360, 2)), rng.normal((2, 0), 1.0, (40, 2))])
    yt = np.repeat(["0", "1"], [360, 40])
    Xt = _standardised(Xt)
    fitted = LogisticRegression().fit(Xs, ys)
    plain = f1_score(yt, fitted.predict(Xt), average="macro")
    model = _adapter(adaptation, Xs, ys, fitted).model_for(Xt)
    assert isinstance(model, ClassBalancedModel) and model.weights == BALANCED[adaptation]
    adapted = f1_score(yt, model.predict(Xt), average="macro")
    assert adapted > plain + 0.1
    # A lab with the source's own class mix is left about as it was.
    Xb, yb = _blobs(rng, [(-2, 0), (2, 0)], 200, 1.0)
    Xb = _standardised(Xb)
    assert abs(f1_score(yb, model.predict(Xb), average="macro")
               - f1_score(yb, fitted.predict(Xb), average="macro")) < 0.02
    np.testing.assert_allclose(model.predict_proba(Xt).sum(axis=1), 1.0)


def test_the_balanced_refit_is_made_once_per_training_set(monkeypatch):
    from dorl.classify import adaptation

    rng = np.random.default_rng(0)
    Xs, ys = _blobs(rng, [(-2, 0), (2, 0)], 100, 0.7)
    fitted = LogisticRegression().fit(Xs, ys)
    calls = []
    real = adaptation.fit_class_balanced
    monkeypatch.setattr(adaptation, "fit_class_balanced",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    adapter = _adapter("balanced_std", Xs, ys, fitted)
    first = adapter.model_for(_rotated_target(rng, 50)[0])
    assert adapter.model_for(_rotated_target(rng, 60)[0]) is first and len(calls) == 1


def test_hard_weights_give_each_cell_its_predicted_class_only():
    rng = np.random.default_rng(0)
    Xs, ys = _blobs(rng, [(-2, 0), (2, 0)], 100, 0.7)
    hard = ClassBalancedModel(LogisticRegression().fit(Xs, ys), weights="labels", max_rounds=1)
    X = np.concatenate([rng.normal((-2, 0), 0.7, (90, 2)), rng.normal((2, 0), 0.7, (10, 2))])
    predicted = np.eye(2)[hard.model.predict(X).astype(int)]
    np.testing.assert_allclose(hard.standardise(X), class_balanced_standardise(X, predicted),
                               atol=1e-6)
    with pytest.raises(ValueError, match="weights"):
        ClassBalancedModel(hard.model, weights="soft")


def test_class_balanced_statistics_block_by_block_equal_one_block(monkeypatch):
    from dorl.classify import adaptation

    rng = np.random.default_rng(0)
    X, weights = rng.normal(3, 2, (500, 6)).astype(np.float32), rng.random((500, 4))
    whole = class_balanced_standardise(X, weights)
    monkeypatch.setattr(adaptation, "BALANCE_BLOCK", 64)
    np.testing.assert_allclose(class_balanced_standardise(X, weights), whole, atol=1e-5)
    # Weighted by classes that weigh the same, the result has zero mean and unit variance.
    w = (weights / weights.sum(axis=0)).sum(axis=1) / 4
    np.testing.assert_allclose(w @ whole, 0, atol=1e-4)
    np.testing.assert_allclose(w @ whole.astype(np.float64) ** 2, 1, atol=1e-4)
