"""Per-domain feature standardisation, shared by the autoencoder's input, the classify stage and
the feature baselines.

It follows the scikit-learn estimator contract and passes
``sklearn.utils.estimator_checks.parametrize_with_checks``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data


class DomainStandardScaler(TransformerMixin, BaseEstimator):
    """Standardise each domain's features with that domain's own mean and standard deviation.

    A simple, label-free domain-alignment baseline: it removes per-lab offsets and scales. Using
    the target domains' statistics is transductive (their unlabelled cells are seen), as is the
    DoRL autoencoder's training. Without ``domains`` it is a plain standard scaler.

    Parameters
    ----------
    with_std : bool, default=True
        Also divide by the per-domain standard deviation (else only centre).

    Attributes
    ----------
    domains_ : ndarray of shape (n_domains,)
        The domain names seen in ``fit``.
    mean_ : ndarray of shape (n_domains, n_features)
    scale_ : ndarray of shape (n_domains, n_features)
        Per-domain standard deviation (1 where it is 0, or when ``with_std`` is False).
    n_features_in_ : int
    """

    def __init__(self, with_std=True):
        self.with_std = with_std

    def fit(self, X, y=None, domains=None):
        """Learn per-domain stats of ``X`` (n_samples, n_features), ``domains`` (n_samples,)."""
        X = validate_data(self, X, dtype=np.float64)
        domains = self._domains(domains, len(X))
        self.domains_ = np.unique(domains)
        self.mean_ = np.stack([X[domains == d].mean(axis=0) for d in self.domains_])
        if self.with_std:
            scale = np.stack([X[domains == d].std(axis=0) for d in self.domains_])
            self.scale_ = np.where(scale > 0, scale, 1.0)
        else:
            self.scale_ = np.ones_like(self.mean_)
        return self

    def transform(self, X, domains=None):
        """Return ``X`` (n_samples, n_features) standardised per domain, same shape."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        domains = self._domains(domains, len(X))
        unseen = sorted(set(np.unique(domains)) - set(self.domains_))
        if unseen:
            raise ValueError(f"domains {[str(d) for d in unseen]} were not seen in fit "
                             f"(seen: {[str(d) for d in self.domains_]})")
        index = np.searchsorted(self.domains_, domains)
        return (X - self.mean_[index]) / self.scale_[index]

    def fit_transform(self, X, y=None, domains=None):
        """Fit, then transform the same rows."""
        return self.fit(X, y, domains=domains).transform(X, domains=domains)

    @staticmethod
    def _domains(domains, n: int) -> np.ndarray:
        if domains is None:
            return np.zeros(n, dtype=int)
        domains = np.asarray(domains)
        if domains.shape != (n,):
            raise ValueError(f"domains has shape {domains.shape}, expected ({n},)")
        return domains
