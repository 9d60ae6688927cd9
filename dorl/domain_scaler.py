"""Per-domain feature standardisation, shared by the embedding (``features.standardise``), the
classify stage and the feature baselines.

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
    n_samples_seen_ : ndarray of shape (n_domains,)
    mean_ : ndarray of shape (n_domains, n_features)
    var_ : ndarray of shape (n_domains, n_features)
    scale_ : ndarray of shape (n_domains, n_features)
        Per-domain standard deviation (1 where it is 0, or when ``with_std`` is False).
    n_features_in_ : int
    """

    def __init__(self, with_std=True):
        self.with_std = with_std

    def fit(self, X, y=None, domains=None):
        """Learn per-domain stats of ``X`` (n_samples, n_features), ``domains`` (n_samples,)."""
        if hasattr(self, "mean_"):  # a fit starts afresh; partial_fit adds to what it has
            del self.mean_
        return self.partial_fit(X, y, domains=domains)

    def partial_fit(self, X, y=None, domains=None):
        """Update the per-domain stats with one more block of rows, so that features larger
        than memory are fitted block by block. The pairwise update of Chan, Golub and LeVeque
        (1979) gives the statistics of all blocks together, in any order."""
        first = not hasattr(self, "mean_")
        X = validate_data(self, X, dtype=np.float64, reset=first)
        domains = self._domains(domains, len(X))
        names = np.unique(domains)
        known = names if first else np.union1d(self.domains_, names)
        count = np.zeros(len(known))
        mean = np.zeros((len(known), X.shape[1]))
        m2 = np.zeros_like(mean)
        if not first:
            at = np.searchsorted(known, self.domains_)
            count[at], mean[at] = self.n_samples_seen_, self.mean_
            m2[at] = self.var_ * self.n_samples_seen_[:, None]
        for name in names:
            rows = X[domains == name]
            k = np.searchsorted(known, name)
            n_new, mean_new = len(rows), rows.mean(axis=0)
            delta, total = mean_new - mean[k], count[k] + n_new
            m2[k] += ((rows - mean_new) ** 2).sum(axis=0) + delta ** 2 * count[k] * n_new / total
            mean[k] += delta * n_new / total
            count[k] = total
        self.domains_, self.n_samples_seen_, self.mean_ = known, count, mean
        self.var_ = m2 / count[:, None]
        if self.with_std:
            scale = np.sqrt(self.var_)
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
