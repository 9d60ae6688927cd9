"""Class-balanced pseudo-labels for the unlabelled cells the encoder trains on (self-training).

Once the label-free epochs have made the embedding fairer across labs, the cells whose label
the encoder may learn from (``cae.label_domains``) train a logistic regression on the current
embedding, every lab standardised as the classify stage's headline adaptation does it
(``balanced_std_hard``: each lab's own statistics, then those of a mixture in which every class
weighs the same, so that a lab's class mix does not move its cells). Its most confident
predictions on every lab's unlabelled cells become labels for the next epoch's cross-entropy
term (``cae.pseudo_labels``).

The choice is class-balanced within each lab: every class may take at most ``fraction`` of an
equal share of the lab's unlabelled cells, the most confident first. A lab whose cells look
mostly like one source class cannot flood training with that class, the failure that
self-training on the classifier's confident cells alone falls into.
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from dorl.classify.adaptation import fit_class_balanced
from dorl.domain_scaler import DomainStandardScaler
from dorl.features.efficientnet import EfficientNetLite
from dorl.features.encode import domain_sample, encode_crops, recalibrate_on_crops
from dorl.row_sources import RowSource, take

logger = logging.getLogger(__name__)

#: Cells read and embedded at a time, and cells per lab that re-estimate BatchNorm (AdaBN).
CHUNK, ADABN_CELLS, BATCH = 256, 256, 64


def embed_rows(encoder: EfficientNetLite, crops: RowSource, rows: np.ndarray,
               domains: np.ndarray, device: torch.device) -> np.ndarray:
    """Pooled features (len(rows), d) of the crops ``rows`` in the current encoder.

    A copy of the encoder re-estimates its BatchNorm statistics on each lab's own cells first
    (AdaBN, as the embedding stage does), so the training model is left untouched.

    Parameters
    ----------
    encoder : EfficientNetLite
    crops : row source of shape (n, s, s, 3), uint8
    rows : int ndarray of shape (m,)
    domains : int ndarray of shape (m,)
        The lab of each of ``rows``.
    device : torch.device
    """
    model = copy.deepcopy(encoder).to(device)
    side = int(crops.shape[1])
    out = np.empty((len(rows), encoder.out_dim), np.float32)
    for domain in np.unique(domains):
        positions = np.flatnonzero(domains == domain)
        sample = positions[domain_sample(np.zeros(len(positions), int), ADABN_CELLS)]
        recalibrate_on_crops(model, side, take(crops, rows[sample]), BATCH, False)
        for start in range(0, len(positions), CHUNK):
            part = positions[start:start + CHUNK]
            out[part] = encode_crops(model, side, take(crops, rows[part]), domains[part], 0,
                                     BATCH, False)
    return out


def choose_pseudo_labels(features: np.ndarray, labels: np.ndarray, domains: np.ndarray,
                         fraction: float, seed: int) -> np.ndarray:
    """Class-balanced confident labels for the rows whose ``labels`` are -1.

    Parameters
    ----------
    features : float ndarray of shape (m, d)
    labels : int ndarray of shape (m,)
        Class index of the rows that may train, -1 elsewhere.
    domains : int ndarray of shape (m,)
    fraction : float in (0, 1]
        Each class takes at most ``ceil(fraction * u / K)`` of a lab's ``u`` unlabelled cells
        (``K`` the classes labelled), the most confident first.
    seed : int

    Returns
    -------
    int ndarray of shape (m,)
        The chosen class of each unlabelled row taken, -1 for every other row (labelled rows
        included).
    """
    chosen = np.full(len(labels), -1, np.int64)
    known = labels >= 0
    classes = np.unique(labels[known])
    if len(classes) < 2 or known.all():
        return chosen
    X = DomainStandardScaler().fit_transform(features, domains=domains)
    classifier = fit_class_balanced(LogisticRegression(max_iter=2000, random_state=seed),
                                    X[known], labels[known], weights="labels")
    for domain in np.unique(domains[~known]):
        rows = np.flatnonzero((domains == domain) & ~known)
        # A lab whose cells are all unlabelled is standardised alone; one with labelled cells
        # as well (an unlabelled share of a source lab) is standardised with its whole self.
        lab = np.flatnonzero(domains == domain)
        _, scores = classifier.predict_with_scores(X[lab])
        scores = scores[np.isin(lab, rows)]
        predicted, confidence = classifier.classes_[scores.argmax(1)], scores.max(1)
        quota = math.ceil(fraction * len(rows) / len(classes))
        for k in classes:
            of_class = rows[predicted == k]
            order = np.argsort(-confidence[predicted == k], kind="stable")
            chosen[of_class[order[:quota]]] = k
    return chosen


def pseudo_labels(encoder: EfficientNetLite, crops: RowSource, rows: np.ndarray,
                  labels: np.ndarray, domain_ids: np.ndarray, fraction: float, seed: int,
                  device: torch.device) -> np.ndarray:
    """Pseudo-labels (n,) for the whole of ``crops``: a class for the unlabelled training rows
    :func:`choose_pseudo_labels` takes, -1 elsewhere. ``labels`` and ``domain_ids`` have one
    entry per crop; ``rows`` are the cells that train."""
    features = embed_rows(encoder, crops, rows, domain_ids[rows], device)
    chosen = choose_pseudo_labels(features, labels[rows], domain_ids[rows], fraction, seed)
    out = np.full(len(labels), -1, np.int64)
    out[rows] = chosen
    taken = chosen >= 0
    logger.info("CAE pseudo-labels: %d of %d unlabelled cells taken, per class %s", taken.sum(),
                (labels[rows] < 0).sum(),
                {int(k): int(n) for k, n in zip(*np.unique(chosen[taken], return_counts=True))})
    return out
