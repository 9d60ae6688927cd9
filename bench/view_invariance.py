"""A label-free projection that removes what changes between two views of the same cell.

Two random stain, colour, blur and scale changes of one cell (``augment_batch``) should not move
its features; in practice they do, along a few directions of feature space. Those directions are
the principal axes of the view differences (features of view A minus those of view B, cell by
cell, after per-domain standardisation). :class:`ViewInvariantProjection` finds the smallest set
of axes that carries ``variance`` of the differences and projects every feature vector onto their
orthogonal complement. It is the closed-form, linear counterpart of the autoencoder's two-view
consistency term: no labels, no training loop, one SVD.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from dorl.sam.augment import augment_batch


class ViewInvariantProjection(TransformerMixin, BaseEstimator):
    """Project out the leading principal axes of view differences.

    Parameters
    ----------
    variance : float, default=0.5
        Fraction (0 < variance < 1) of the view-difference variance the removed axes carry.
    max_components : int or None, default=None
        At most this many axes are removed (None: no limit beyond ``variance``).

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        The removed axes, orthonormal rows.
    explained_variance_ratio_ : ndarray of shape (n_components,)
        The fraction of the view-difference variance each removed axis carried.
    n_features_in_ : int
    """

    def __init__(self, variance=0.5, max_components=None):
        self.variance = variance
        self.max_components = max_components

    def fit(self, X, y=None):
        """Learn the axes from view differences ``X`` (n_cells, n_features): each row is one
        cell's features under one view minus its features under another."""
        X = validate_data(self, X, dtype=np.float64)
        if not 0.0 < float(self.variance) < 1.0:
            raise ValueError(f"variance must be in (0, 1), got {self.variance!r}")
        # The differences of two views are centred by construction (either view could come
        # first), so the axes are those of the raw second moment, not of a re-centred one.
        _, s, vt = np.linalg.svd(X, full_matrices=False)
        power = s ** 2
        ratio = power / power.sum() if power.sum() > 0 else np.zeros_like(power)
        k = int(np.searchsorted(np.cumsum(ratio), float(self.variance)) + 1)
        if self.max_components is not None:
            k = min(k, int(self.max_components))
        self.components_ = vt[:k]
        self.explained_variance_ratio_ = ratio[:k]
        return self

    def transform(self, X):
        """Return ``X`` (n_samples, n_features) without its components along the removed axes."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X - (X @ self.components_.T) @ self.components_


def two_views(crops: np.ndarray, masks: np.ndarray, augment: dict, seed: int,
              batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Two independent random views of every crop.

    Parameters
    ----------
    crops : uint8 ndarray of shape (n, s, s, 3)
    masks : bool ndarray of shape (n, s, s)
    augment : mapping
        The random changes, as ``sam.finetune.augment`` (:func:`dorl.sam.augment.augment_batch`).
    seed : int

    Returns
    -------
    view_a, view_b : uint8 ndarrays of shape (n, s, s, 3)
    """
    generator = torch.Generator().manual_seed(int(seed))
    views = []
    for _ in range(2):
        parts = []
        for start in range(0, len(crops), batch_size):
            image = torch.from_numpy(np.ascontiguousarray(crops[start:start + batch_size]))
            mask = torch.from_numpy(np.ascontiguousarray(masks[start:start + batch_size]))
            parts.append(augment_batch(image, mask, augment, generator)[0].numpy())
        views.append(np.concatenate(parts) if parts else crops[:0].copy())
    return views[0], views[1]
