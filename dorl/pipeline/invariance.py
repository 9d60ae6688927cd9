"""How domain-invariant a set of embeddings is, and whether the class information survived.

:func:`domain_invariance` gives three numbers for one feature matrix; :func:`plot_invariance`
draws them side by side for several feature sets (e.g. raw SAM features against the CAE latent)
together with a 2-D PCA view of each, coloured by domain.
"""

from __future__ import annotations

import logging
from itertools import combinations, permutations
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dorl.cae.alignment import mmd2
from dorl.data.taxonomy import UNKNOWN
from dorl.figures import pyplot, save_figure

logger = logging.getLogger(__name__)

METRICS = ("mmd", "domain_clf_acc", "cross_domain_macro_f1")
#: Cells per domain used for the MMD estimate (a random subset beyond this, for speed).
MMD_MAX_PER_DOMAIN = 1000
#: Cells per domain (spread evenly over its rows) a feature file's figures are computed on, so
#: that their classifiers' time and memory stay bounded on large runs.
CELLS_PER_DOMAIN = 2000


def _mean_pairwise_mmd(X: np.ndarray, domains: np.ndarray, rng: np.random.Generator) -> float:
    groups = {}
    for d in np.unique(domains):
        idx = np.flatnonzero(domains == d)
        if len(idx) > MMD_MAX_PER_DOMAIN:
            idx = rng.choice(idx, MMD_MAX_PER_DOMAIN, replace=False)
        groups[d] = torch.from_numpy(X[idx].astype(np.float64))
    values = [float(mmd2(groups[a], groups[b])) for a, b in combinations(sorted(groups), 2)]
    return float(np.mean(values))


def _cross_domain_f1(X: np.ndarray, domains: np.ndarray, labels: np.ndarray,
                     seed: int) -> dict[str, float]:
    """Macro-F1 per ordered (train domain -> test domain) pair, on the classes both share."""
    scores = {}
    labelled = labels != UNKNOWN
    for src, tgt in permutations(np.unique(domains), 2):
        train = labelled & (domains == src)
        classes = np.unique(labels[train])
        test = labelled & (domains == tgt) & np.isin(labels, classes)
        shared = np.unique(labels[test])
        if len(classes) < 2 or len(shared) < 2:
            logger.info("cross-domain F1 %s -> %s skipped: fewer than 2 shared classes", src, tgt)
            continue
        clf = make_pipeline(StandardScaler(),
                            LogisticRegression(max_iter=1000, random_state=seed))
        clf.fit(X[train], labels[train])
        scores[f"{src}->{tgt}"] = float(f1_score(labels[test], clf.predict(X[test]),
                                                 labels=shared, average="macro"))
    return scores


def domain_invariance(X: np.ndarray, domains, labels, seed: int) -> dict:
    """Domain-invariance and class-retention figures of one feature matrix.

    Parameters
    ----------
    X : ndarray of shape (n_cells, n_features)
    domains : array-like of str, shape (n_cells,)
    labels : array-like of str, shape (n_cells,)
        ``unknown`` cells are left out of the cross-domain score.
    seed : int
        For the cross-validation folds, the MMD subsample and the classifiers.

    Returns
    -------
    dict
        ``mmd``: mean pairwise multi-kernel MMD^2 between domains on standardised X (lower = more
        invariant); ``domain_clf_acc``: 5-fold accuracy of a logistic-regression domain classifier
        (lower = more invariant) and ``domain_clf_chance`` (the majority-domain share);
        ``cross_domain_macro_f1``: mean over ordered domain pairs of the macro-F1 of a logistic
        regression trained on one domain's labelled cells and scored on another's shared classes
        (higher = class information kept across domains), with ``cross_domain_pairs`` per pair;
        ``n_cells``.
    """
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    domains = np.asarray(domains).astype(str)
    labels = np.asarray(labels).astype(str)
    if len(np.unique(domains)) < 2:
        raise ValueError("domain invariance needs cells from at least two domains")
    Xs = StandardScaler().fit_transform(X)
    rng = np.random.default_rng(seed)
    names, counts = np.unique(domains, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"domain invariance needs at least 2 cells per domain; "
                         f"{names[counts.argmin()]!r} has {counts.min()}")
    folds = StratifiedKFold(n_splits=int(min(5, counts.min())), shuffle=True, random_state=seed)
    acc = cross_val_score(LogisticRegression(max_iter=1000, random_state=seed), Xs, domains,
                          cv=folds)
    pairs = _cross_domain_f1(X, domains, labels, seed)
    return {
        "mmd": _mean_pairwise_mmd(Xs, domains, rng),
        "domain_clf_acc": float(acc.mean()),
        "domain_clf_chance": float(counts.max() / counts.sum()),
        "cross_domain_macro_f1": float(np.mean(list(pairs.values()))) if pairs else float("nan"),
        "cross_domain_pairs": pairs,
        "n_cells": int(len(X)),
    }


def plot_invariance(results: Mapping[str, dict], features: Mapping[str, np.ndarray],
                    domains, path: str | Path) -> Path:
    """Bar charts of the three figures per feature set, and a PCA scatter of each by domain.

    Parameters
    ----------
    results : mapping of name -> dict from :func:`domain_invariance`
    features : mapping of name -> ndarray of shape (n_cells, n_features), same names
    domains : array-like of str, shape (n_cells,)
    path : str or Path
        The PNG to write.
    """
    plt = pyplot()
    from sklearn.decomposition import PCA

    names = list(results)
    domains = np.asarray(domains).astype(str)
    n_cols = max(len(METRICS), len(names))
    fig, axes = plt.subplots(2, n_cols, figsize=(3.6 * n_cols, 7), squeeze=False)
    titles = {"mmd": "MMD$^2$ between domains (lower)",
              "domain_clf_acc": "domain classifier acc. (lower)",
              "cross_domain_macro_f1": "cross-domain macro-F1 (higher)"}
    for ax, metric in zip(axes[0], METRICS):
        ax.bar(names, [results[n][metric] for n in names], color="tab:blue")
        if metric == "domain_clf_acc":
            ax.axhline(results[names[0]]["domain_clf_chance"], color="k", ls="--", lw=0.8,
                       label="chance")
            ax.legend(fontsize=7)
        ax.set_title(titles[metric], fontsize=9)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    for ax, name in zip(axes[1], names):
        xy = PCA(n_components=2).fit_transform(StandardScaler().fit_transform(features[name]))
        for d in np.unique(domains):
            sel = domains == d
            ax.scatter(xy[sel, 0], xy[sel, 1], s=3, alpha=0.5, label=d)
        ax.set_title(f"{name}: PCA by domain", fontsize=9)
        ax.legend(fontsize=7, markerscale=3)
    for ax in list(axes[0][len(METRICS):]) + list(axes[1][len(names):]):
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)
