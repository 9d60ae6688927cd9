"""The classify stage's wrapper estimator (the per-domain scaler is :mod:`dorl.domain_scaler`).

It follows the scikit-learn estimator contract (``__init__`` only stores parameters, learned
state ends in ``_``) and passes ``sklearn.utils.estimator_checks.parametrize_with_checks``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


class EncodedLabelClassifier(ClassifierMixin, BaseEstimator):
    """Fit ``estimator`` on labels encoded as 0..K-1 and decode its predictions.

    XGBoost refuses labels that are not exactly ``0..K-1`` (e.g. a source domain that lacks a
    class, or string labels); this wrapper makes any classifier accept what the domain holds.

    Parameters
    ----------
    estimator : classifier
        Cloned at ``fit``; sees integer labels only.
    class_weight : "balanced", dict or None, default=None
        Turned into ``sample_weight`` for ``estimator.fit`` (``"balanced"``: inverse class
        frequency; a dict maps original labels to weights), for models (like XGBoost) that have
        no ``class_weight`` of their own.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The original labels, sorted.
    estimator_ : classifier
        The fitted clone.
    n_features_in_ : int
    """

    def __init__(self, estimator, class_weight=None):
        self.estimator = estimator
        self.class_weight = class_weight

    def fit(self, X, y, sample_weight=None):
        """Fit on ``X`` of shape (n_samples, n_features) and labels ``y`` of shape (n_samples,)."""
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        if self.class_weight is not None:
            sample_weight = _class_weighted(self.class_weight, y, sample_weight)
        fit_params = {} if sample_weight is None else {"sample_weight": sample_weight}
        self.estimator_ = clone(self.estimator).fit(X, encoder.transform(y), **fit_params)
        return self

    def predict(self, X):
        """Return labels of shape (n_samples,) in the original label space."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        codes = np.asarray(self.estimator_.predict(X)).astype(int).ravel()
        return self.classes_[codes]

    def predict_proba(self, X):
        """Return probabilities of shape (n_samples, n_classes), columns in ``classes_`` order."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return self.estimator_.predict_proba(X)


def _class_weighted(class_weight, y: np.ndarray, sample_weight) -> np.ndarray:
    """Return per-sample weights (n_samples,) = ``sample_weight`` x the weight of each label.

    ``"balanced"`` gives class c the weight ``total / (n_classes * total_c)`` over the (weighted)
    counts, so that repeating a sample and doubling its weight give the same model.
    """
    base = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    if class_weight != "balanced":
        return base * compute_sample_weight(class_weight, y)
    classes, codes = np.unique(y, return_inverse=True)
    totals = np.bincount(codes, weights=base, minlength=len(classes))
    per_class = base.sum() / (len(classes) * np.where(totals > 0, totals, 1.0))
    return base * per_class[codes]
