"""Custom estimators: the scikit-learn contract and their own behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.utils.estimator_checks import parametrize_with_checks
from xgboost import XGBClassifier

from dorl.classify.estimators import EncodedLabelClassifier
from dorl.domain_scaler import DomainStandardScaler

from view_invariance import ViewInvariantProjection


@parametrize_with_checks([
    EncodedLabelClassifier(LogisticRegression(max_iter=200)),
    EncodedLabelClassifier(LogisticRegression(max_iter=200), class_weight="balanced"),
    DomainStandardScaler(),
    ViewInvariantProjection(),
])
def test_sklearn_contract(estimator, check):
    check(estimator)


def test_encoded_labels_let_xgboost_fit_labels_that_are_not_0_to_k():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 4))
    y = np.repeat(["eosinophil", "monocyte", "neutrophil"], 30)
    X[y == "monocyte"] += 3
    X[y == "neutrophil"] -= 3
    model = EncodedLabelClassifier(XGBClassifier(n_estimators=10, n_jobs=1), "balanced").fit(X, y)
    assert list(model.classes_) == ["eosinophil", "monocyte", "neutrophil"]
    assert (model.predict(X) == y).mean() > 0.9
    assert model.predict_proba(X).shape == (90, 3)


def test_balanced_weights_shift_decisions_towards_the_rare_class():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(0, 1, (400, 1)), rng.normal(1.5, 1, (20, 1))])
    y = np.array([0] * 400 + [1] * 20)
    plain = EncodedLabelClassifier(LogisticRegression()).fit(X, y)
    balanced = EncodedLabelClassifier(LogisticRegression(), "balanced").fit(X, y)
    assert (balanced.predict(X) == 1).sum() > (plain.predict(X) == 1).sum()


def test_domain_scaler_standardises_each_domain_separately():
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(5, 2, (50, 3)), rng.normal(-4, 0.5, (70, 3))])
    domains = np.array(["a"] * 50 + ["b"] * 70)
    Z = DomainStandardScaler().fit_transform(X, domains=domains)
    for d in ("a", "b"):
        np.testing.assert_allclose(Z[domains == d].mean(axis=0), 0, atol=1e-9)
        np.testing.assert_allclose(Z[domains == d].std(axis=0), 1, atol=1e-9)


def test_domain_scaler_refuses_unseen_domains():
    X = np.arange(12.0).reshape(6, 2)
    scaler = DomainStandardScaler().fit(X, domains=np.array(list("aabbaa")))
    with pytest.raises(ValueError, match=r"\['c'\] were not seen"):
        scaler.transform(X, domains=np.array(list("aaccaa")))


def test_domain_scaler_partial_fit_over_blocks_equals_one_fit():
    rng = np.random.default_rng(3)
    X = rng.normal(2, 3, (500, 4))
    domains = rng.choice(["a", "b", "c"], 500)
    whole = DomainStandardScaler().fit(X, domains=domains)
    blocks = DomainStandardScaler()
    # Blocks of uneven size, a domain absent from some of them, domains arriving late.
    order = np.argsort(domains == "c", kind="stable")
    for start in range(0, 500, 77):
        rows = order[start:start + 77]
        blocks.partial_fit(X[rows], domains=domains[rows])
    np.testing.assert_array_equal(blocks.domains_, whole.domains_)
    np.testing.assert_allclose(blocks.mean_, whole.mean_, atol=1e-12)
    np.testing.assert_allclose(blocks.scale_, whole.scale_, atol=1e-12)
    np.testing.assert_array_equal(blocks.n_samples_seen_, [np.sum(domains == d) for d in "abc"])
