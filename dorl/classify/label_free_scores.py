"""Label-free scores for choosing a classifier on a target lab without its labels.

* :func:`soft_neighbourhood_density` (Saito et al. 2021): how tightly a model's class scores on
  the target's cells group;
* :func:`vote_agreement`: each classifier's agreement with the other classifiers' majority vote.

Both are reported beside the scores; target labels are never read here.
"""

from __future__ import annotations

import numpy as np

from dorl.classify.adaptation import class_scores


def _density_cells(n: int, max_cells: int, seed: int) -> np.ndarray | slice:
    """The cells soft neighbourhood density reads: a seeded subset of ``max_cells`` of ``n``."""
    if n > max_cells:
        return np.random.default_rng(seed).choice(n, max_cells, replace=False)
    return slice(None)


def model_density(model, X: np.ndarray, seed: int = 0, max_cells: int = 2000) -> float:
    """:func:`soft_neighbourhood_density` of ``model``'s class scores on ``X`` (n_cells,
    n_features), scoring only the cells it reads (a large target costs no more than 2,000)."""
    scores = class_scores(model, X[_density_cells(len(X), max_cells, seed)])
    return soft_neighbourhood_density(scores, max_cells=max_cells, seed=seed)


def soft_neighbourhood_density(scores: np.ndarray, temperature: float = 0.05,
                               max_cells: int = 2000, seed: int = 0) -> float:
    """Soft neighbourhood density (Saito et al. 2021) of a model's class scores on a target.

    The mean entropy of each cell's softmax similarity to the other cells, computed on the
    L2-normalised class scores: high when cells form tight groups of similar predictions.
    Higher is better. At most ``max_cells`` cells (a seeded random subset) keep it O(1) in the
    number of target cells.

    Parameters
    ----------
    scores : ndarray of shape (n_cells, n_classes)
    temperature : float, default=0.05
        The paper's value.
    max_cells : int, default=2000
    seed : int, default=0

    Returns
    -------
    float
    """
    scores = scores[_density_cells(len(scores), max_cells, seed)]
    if len(scores) < 2:
        return float("nan")
    unit = scores / np.maximum(np.linalg.norm(scores, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T / temperature
    np.fill_diagonal(sim, -np.inf)
    sim -= sim.max(axis=1, keepdims=True)
    p = np.exp(sim)
    p /= p.sum(axis=1, keepdims=True)
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    return float(entropy.mean())


def vote_agreement(predictions: dict[str, np.ndarray]) -> dict[str, float]:
    """Each classifier's agreement with the majority vote of the *other* classifiers.

    A label-free choice that, unlike entropy or SND, does not compare class scores across model
    families (a forest's probabilities and an SVM's softmaxed margins have different scales).

    Parameters
    ----------
    predictions : dict of str -> ndarray of shape (n_cells,), int
        Class codes predicted by each classifier on the same cells.

    Returns
    -------
    dict of str -> float
        Share of cells where a classifier matches the others' vote (ties: the lowest code).
        With a single classifier there is nothing to vote against: NaN.
    """
    names = list(predictions)
    if len(names) < 2:
        return {n: float("nan") for n in names}
    stacked = np.stack([predictions[n] for n in names])
    n_codes = int(stacked.max()) + 1
    counts = np.stack([(stacked == c).sum(axis=0) for c in range(n_codes)])  # (codes, cells)
    out = {}
    for i, name in enumerate(names):
        others = counts.copy()
        np.subtract.at(others, (stacked[i], np.arange(stacked.shape[1])), 1)
        out[name] = float((others.argmax(axis=0) == stacked[i]).mean())
    return out
