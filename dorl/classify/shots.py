"""How a target's labelled cells train beside the source's (``classify.shot_training``).

A lab that labels a few of its own cells (``few_shot``, ``target_labels``) holds tens of them
against the source's thousands: joined as they are, the source's cells outvote them, and a
model trained across labs keeps the source's view of the cell types. Each route keeps, for each
class, ``ratio`` source cells per labelled target cell of that class (a class-stratified random
draw):

* ``ratio = None``: every source cell (the source joined with the shots);
* ``ratio = 0``: the shots alone;
* in between: the shots weigh ``1 / (1 + ratio)`` of each class.

A subsample rather than sample weights, so that every estimator of the registry (KNN and the MLP
take no weights) trains the same way. ``auto`` chooses the ratio per fit by cross-validation
within the shots themselves (:func:`choose_ratio`): never on the cells the model is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.base import clone
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

#: ``classify.shot_training`` values: every source cell, and the choice by cross-validation.
ALL, AUTO = "all", "auto"
#: At most this many folds within the shots for ``auto``.
MAX_FOLDS = 5
#: Cross-validated scores this close to the best count as ties, which go to the earliest
#: candidate.
TIE = 0.01


@dataclass(frozen=True)
class ShotTraining:
    """``classify.shot_training``.

    Attributes
    ----------
    source_per_shot : "auto", None or float
        Source cells kept per class for each labelled target cell of that class; ``None``
        (``all`` in the config) keeps all; ``"auto"`` chooses among ``candidates`` per fit.
    candidates : tuple of (float or None)
        The ratios ``auto`` chooses among, ties going to the earliest.
    """

    source_per_shot: str | float | None = None
    candidates: tuple[float | None, ...] = (None,)


def source_subsample(source: np.ndarray, shots: np.ndarray, labels: np.ndarray,
                     ratio: float | None, rng: np.random.Generator) -> np.ndarray:
    """The rows of ``source`` kept beside ``shots``: for each source class, ``ratio`` times as
    many source rows as the class has shots (all of them for ``None``). A class the target has
    too few cells to give shots to counts the median shots of the others, so that the model
    still learns it from the source."""
    if ratio is None:
        return source
    shot_classes, counts = np.unique(labels[shots], return_counts=True)
    per_class = dict(zip(shot_classes, counts))
    default = float(np.median(counts)) if len(counts) else 0.0
    kept = []
    for c in np.unique(labels[source]):
        own = source[labels[source] == c]
        take = min(len(own), int(round(ratio * per_class.get(c, default))))
        kept.append(rng.choice(own, take, replace=False) if take else own[:0])
    return np.sort(np.concatenate(kept)) if kept else source[:0]


def training_rows(source: np.ndarray, shots: np.ndarray, labels: np.ndarray,
                  ratio: float | None, rng: np.random.Generator) -> np.ndarray:
    """The training rows of one route: the kept source rows and the shots, sorted; every source
    row where the route would leave a single class (the shots alone of a lab with one class
    drawn), since no classifier trains on one."""
    rows = np.concatenate([source_subsample(source, shots, labels, ratio, rng), shots])
    if len(np.unique(labels[rows])) < 2:
        rows = np.concatenate([source, shots])
    return np.sort(rows)


def cross_validated(model, X: np.ndarray, labels: np.ndarray, source: np.ndarray,
                    shots: np.ndarray, candidates: Sequence[float | None], seed: int
                    ) -> dict[float | None, float] | None:
    """Each candidate ratio's macro-F1 on the shots, each fold of them predicted by ``model``
    trained on the other folds and that ratio of source cells. None when some class has a
    single shot (nothing to hold out)."""
    _, counts = np.unique(labels[shots], return_counts=True)
    if counts.min() < 2:
        return None
    folds = StratifiedKFold(min(MAX_FOLDS, int(counts.min())), shuffle=True, random_state=seed)
    predicted = {ratio: np.empty(len(shots), dtype=object) for ratio in candidates}
    for fold, (fit, held) in enumerate(folds.split(np.zeros(len(shots)), labels[shots])):
        for ratio in candidates:
            rows = training_rows(source, shots[fit], labels, ratio,
                                 np.random.default_rng([seed, fold]))
            fitted = clone(model).fit(X[rows], labels[rows])
            predicted[ratio][held] = np.asarray(fitted.predict(X[shots[held]])).astype(str)
    truth = labels[shots].astype(str)
    return {ratio: float(f1_score(truth, p.astype(str), labels=np.unique(truth),
                                  average="macro", zero_division=0))
            for ratio, p in predicted.items()}


def choose_ratio(model, X: np.ndarray, labels: np.ndarray, source: np.ndarray,
                 shots: np.ndarray, training: ShotTraining, seed: int) -> float | None:
    """The route's ratio: the configured one, or under ``auto`` the candidate whose
    :func:`cross_validated` score is highest (within :data:`TIE`, the earliest; the first
    candidate when the shots cannot be cross-validated)."""
    if training.source_per_shot != AUTO:
        return training.source_per_shot
    return pick_ratio(cross_validated(model, X, labels, source, shots, training.candidates,
                                      seed), training.candidates)


def pick_ratio(scores: dict[float | None, float] | None,
               candidates: Sequence[float | None]) -> float | None:
    """The candidate of highest :func:`cross_validated` score (within :data:`TIE`, the
    earliest); the first candidate when there are no scores."""
    if scores is None:
        return candidates[0]
    top = max(scores.values())
    return next(r for r in candidates if scores[r] >= top - TIE)
