"""Label-free target adaptation of the classify stage (the label-free scores that choose among
classifiers are in :mod:`dorl.classify.label_free_scores`).

Each adaptation is its own set of rows in the reports, never mixed into the plain classifiers:

* ``none``: the stored features as they are;
* ``domain_std``: every domain standardised with its own mean and standard deviation, over all
  its cells (:class:`~dorl.domain_scaler.DomainStandardScaler`);
* ``coral``: ``domain_std``, then each target's feature covariance aligned to the training
  cells' (CORAL, Sun, Feng & Saenko 2016, in the target-to-source direction so that one fitted
  model serves every target);
* ``self_training``: ``domain_std``, then a few rounds of class-balanced self-training (Zou et
  al. 2018): the model labels the target's cells, the most confident share of each predicted
  class joins the training set with its pseudo-label, and the model is refitted;
* ``balanced_std``: ``domain_std``, then every domain re-standardised with the statistics of a
  mixture in which each class weighs the same (:class:`ClassBalancedModel`). A lab's own mean
  and standard deviation depend on its class mix: a blood smear holds mostly neutrophils and
  lymphocytes, so standardising it moves every cell away from them, while the training lab's
  cells may have been balanced. The training cells are weighted by their labels; the target's
  by the model's class scores, re-estimated until the class shares settle (the EM of Saerens
  et al. 2002, applied to the standardisation);
* ``balanced_std_hard``: ``balanced_std`` with each target cell weighted by the model's
  predicted class alone (hard EM). SVM class scores are softmaxed margins rather than
  probabilities, so soft weights spread every cell over several classes.

The target-side adaptations (``coral``, the balanced and the self-training ones) change
only evaluations whose domain is not one the model trained on. Target labels are never read
here; they only score the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import clone

ADAPTATIONS = ("none", "domain_std", "coral", "balanced_std", "balanced_std_hard",
               "self_training")
#: Adaptations whose features are the per-domain standardised ones.
STANDARDISED = ADAPTATIONS[1:]
#: Adaptations that refit the model on pseudo-labelled target cells.
SELF_TRAINING = ("self_training",)
#: Adaptations that standardise every domain at class-balanced statistics, and how a target's
#: cells are weighted (:class:`ClassBalancedModel`'s ``weights``).
BALANCED = {"balanced_std": "scores", "balanced_std_hard": "labels"}
#: Adaptations that read the target's cells (only targets outside the training domains).
TARGET_SIDE = ("coral", *BALANCED, *SELF_TRAINING)
#: The balanced adaptations re-estimate a target's class shares at most this many times, and
#: stop when no share moves by more than the tolerance (fixed before it was measured on any
#: target).
BALANCE_MAX_ROUNDS = 20
BALANCE_TOLERANCE = 1e-3
#: Cells per block of the class-balanced statistics (bounds their float64 temporaries).
BALANCE_BLOCK = 4096


@dataclass(frozen=True)
class SelfTraining:
    """Class-balanced self-training schedule.

    Attributes
    ----------
    rounds : int
        Refits after the first fit.
    final_fraction : float
        Share of each predicted class taken in the last round; round ``r`` of ``R`` takes
        ``final_fraction * r / R`` (the most confident first), so the pseudo-labelled set grows
        from the surest cells.
    min_confidence : float
        Cells with a lower class score are never pseudo-labelled.
    """

    rounds: int = 3
    final_fraction: float = 0.6
    min_confidence: float = 0.0


def class_scores(model, X: np.ndarray) -> np.ndarray:
    """Class scores of shape (n_samples, n_classes), rows summing to 1, columns in
    ``model.classes_`` order: ``predict_proba`` when the model has it, else the softmax of its
    ``decision_function`` (linear and kernel SVMs)."""
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(X), dtype=np.float64)
    scores = np.asarray(model.decision_function(X), dtype=np.float64)
    if scores.ndim == 1:  # binary: the score of the second class
        scores = np.stack([-scores, scores], axis=1) / 2
    scores = scores - scores.max(axis=1, keepdims=True)
    weights = np.exp(scores)
    return weights / weights.sum(axis=1, keepdims=True)


def _covariance_power(X: np.ndarray, reg: float, power: float):
    """``Y -> Y (cov(X) + reg I)^power`` without forming the (d, d) result.

    With the covariance's eigenvectors ``V`` (k of them) and eigenvalues ``e``, the regularised
    power is ``reg^p I + V diag((e + reg)^p - reg^p) V^T``. With fewer cells than features
    (n <= d) the eigenvectors come from the thin SVD of the centred cells, O(n^2 d) instead of
    an O(d^3) eigensolve: a lab of 100 cells with 1,280 features needs a 100-row SVD.
    """
    centred = X - X.mean(axis=0)
    dof = max(len(X) - 1, 1)
    if len(X) <= X.shape[1]:
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        eigenvalues = singular ** 2 / dof
    else:
        eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / dof)
        eigenvalues, vt = np.clip(eigenvalues, 0, None), vectors.T
    scale = (eigenvalues + reg) ** power - reg ** power
    return lambda Y: reg ** power * Y + ((Y @ vt.T) * scale) @ vt


def coral_align(X_target: np.ndarray, X_source: np.ndarray, reg: float = 1.0) -> np.ndarray:
    """Map target features to the source's mean and covariance (CORAL, target to source).

    ``X_t' = (X_t - mu_t) C_t^{-1/2} C_s^{1/2} + mu_s`` with ``C = cov + reg * I``; the identity
    term (the paper's) keeps the whitening stable when a domain has fewer cells than features.

    Parameters
    ----------
    X_target : ndarray of shape (n_target, n_features)
    X_source : ndarray of shape (n_source, n_features)
    reg : float, default=1.0
        Added to both covariances' diagonals (features are standardised per domain first, so 1
        is the features' own scale).

    Returns
    -------
    ndarray of shape (n_target, n_features), float32
    """
    if reg <= 0:
        raise ValueError(f"coral_align needs reg > 0, got {reg}")
    X_target = np.asarray(X_target, dtype=np.float64)
    X_source = np.asarray(X_source, dtype=np.float64)
    whiten = _covariance_power(X_target, reg, -0.5)
    colour = _covariance_power(X_source, reg, 0.5)
    aligned = colour(whiten(X_target - X_target.mean(axis=0))) + X_source.mean(axis=0)
    return aligned.astype(np.float32)


def class_balanced_standardise(X: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """``X`` standardised with the mean and standard deviation of the mixture in which every
    class weighs the same.

    Parameters
    ----------
    X : ndarray of shape (n_cells, n_features)
    class_weights : ndarray of shape (n_cells, n_classes)
        How much each cell belongs to each class: one-hot labels, or class scores. A class with
        no weight is left out of the mixture.

    Returns
    -------
    ndarray of shape (n_cells, n_features), float32
    """
    totals = class_weights.sum(axis=0)
    present = totals > 1e-9
    weights = (class_weights[:, present] / totals[present]).sum(axis=1)
    weights /= weights.sum()
    # Block by block in float64, so that a large domain costs one float32 copy, not several
    # float64 ones.
    blocks = [slice(i, i + BALANCE_BLOCK) for i in range(0, len(X), BALANCE_BLOCK)]
    mean = sum(weights[b] @ np.asarray(X[b], np.float64) for b in blocks)
    var = sum(weights[b] @ (np.asarray(X[b], np.float64) - mean) ** 2 for b in blocks)
    std = np.sqrt(var)
    scale = np.where(std > 1e-6, std, 1.0)
    out = np.empty(np.shape(X), np.float32)
    for b in blocks:
        out[b] = (np.asarray(X[b], np.float64) - mean) / scale
    return out


class ClassBalancedModel:
    """A fitted classifier that predicts each batch of cells after standardising it with
    class-balanced statistics (``balanced_std`` and ``balanced_std_hard``).

    The batch is one domain's cells. Its class weights come from the model's class scores,
    re-estimated on the re-standardised cells until no class share moves by more than
    ``tolerance`` or ``max_rounds`` re-estimates were made.

    Parameters
    ----------
    model : classifier
        Fitted on training cells standardised by :func:`class_balanced_standardise` with their
        labels (:func:`fit_class_balanced`).
    weights : {"scores", "labels"}, default="scores"
        A cell's class weights: the model's class scores (soft EM), or one for its predicted
        class and none for the others (hard EM).
    max_rounds : int
    tolerance : float

    Attributes
    ----------
    classes_ : ndarray
        ``model.classes_``.
    """

    def __init__(self, model, weights: str = "scores", max_rounds: int = BALANCE_MAX_ROUNDS,
                 tolerance: float = BALANCE_TOLERANCE):
        if weights not in ("scores", "labels"):
            raise ValueError(f"weights must be 'scores' or 'labels', not {weights!r}")
        self.model = model
        self.weights = weights
        self.max_rounds = max_rounds
        self.tolerance = tolerance
        self.classes_ = model.classes_

    def standardise(self, X: np.ndarray) -> np.ndarray:
        """``X`` (n_cells, n_features), one domain's cells, at their class-balanced statistics."""
        Z = np.asarray(X, dtype=np.float32)
        shares = None
        for _ in range(self.max_rounds):
            scores = class_scores(self.model, Z)
            if self.weights == "labels":
                scores = np.eye(scores.shape[1])[scores.argmax(axis=1)]
            new_shares = scores.mean(axis=0)
            if shares is not None and np.abs(new_shares - shares).max() <= self.tolerance:
                break
            shares = new_shares
            Z = class_balanced_standardise(X, scores)
        return Z

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict(self.standardise(X))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return class_scores(self.model, self.standardise(X))

    def predict_with_scores(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict` and :meth:`predict_proba` of one domain's cells, standardised once."""
        Z = self.standardise(X)
        return self.model.predict(Z), class_scores(self.model, Z)


def fit_class_balanced(model, X_train: np.ndarray, y_train: np.ndarray,
                       weights: str = "scores") -> ClassBalancedModel:
    """A clone of ``model`` fitted on the training cells standardised with their labels'
    class-balanced statistics, wrapped to predict targets the same way, their cells weighted by
    ``weights`` (:class:`ClassBalancedModel`)."""
    classes = np.unique(y_train)
    onehot = (np.asarray(y_train)[:, None] == classes[None, :]).astype(np.float64)
    return ClassBalancedModel(clone(model).fit(class_balanced_standardise(X_train, onehot),
                                               y_train), weights)


def pseudo_labels(scores: np.ndarray, classes: np.ndarray, fraction: float,
                  min_confidence: float, limit: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pick, in every predicted class, its most confident ``fraction`` of cells.

    Per-class quotas (rather than one global threshold) keep rare classes in the pseudo-labelled
    set: a global threshold fills it with the classes the source model is surest of.

    Parameters
    ----------
    scores : ndarray of shape (n_cells, n_classes)
        Class scores (:func:`class_scores`).
    classes : ndarray of shape (n_classes,)
    fraction : float
        Share of each predicted class kept, in (0, 1].
    min_confidence : float
        Cells scoring lower are never kept.
    limit : int, optional
        At most this many cells in all; every class's quota shrinks by the same factor.

    Returns
    -------
    rows : ndarray of shape (n_kept,), int
        Row indices into ``scores``, sorted.
    labels : ndarray of shape (n_kept,)
        Their pseudo-labels.
    """
    predicted = scores.argmax(axis=1)
    confidence = scores.max(axis=1)
    present = np.unique(predicted)
    takes = {c: int(np.ceil(fraction * np.sum(predicted == c))) for c in present}
    total = sum(takes.values())
    if limit is not None and total > limit:
        takes = {c: int(t * limit / total) for c, t in takes.items()}
    keep = []
    for c in present:
        rows = np.flatnonzero((predicted == c) & (confidence >= min_confidence))
        keep.append(rows[np.argsort(-confidence[rows], kind="stable")[:takes[c]]])
    rows = np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=int)
    return rows, np.asarray(classes)[predicted[rows]]


def self_train(model, X_train: np.ndarray, y_train: np.ndarray, X_target: np.ndarray,
               schedule: SelfTraining, fitted=None, max_cells: int | None = None):
    """Refit ``model`` on the training cells plus pseudo-labelled target cells, round by round.

    Parameters
    ----------
    model : classifier
        Unfitted; cloned for every round.
    X_train, y_train : ndarray of shape (n_train, n_features) and (n_train,)
    X_target : ndarray of shape (n_target, n_features)
        The target's cells; their labels are never seen.
    schedule : SelfTraining
    fitted : classifier, optional
        ``model`` already fitted on the training cells (saves the first fit).
    max_cells : int, optional
        Training cells plus pseudo-labelled cells stay within this (the training-set cap).

    Returns
    -------
    classifier
        The model of the last round.
    """
    current = fitted if fitted is not None else clone(model).fit(X_train, y_train)
    for r in range(1, schedule.rounds + 1):
        scores = class_scores(current, X_target)
        limit = None if max_cells is None else max(0, max_cells - len(y_train))
        rows, labels = pseudo_labels(scores, current.classes_,
                                     schedule.final_fraction * r / schedule.rounds,
                                     schedule.min_confidence, limit)
        current = clone(model).fit(np.concatenate([X_train, X_target[rows]]),
                                   np.concatenate([y_train, labels]))
    return current


class TargetAdapter:
    """The model that predicts each target of one training set under ``adaptation``.

    The self-training adaptations refit ``model`` with each target's pseudo-labelled cells
    (:func:`self_train`, from ``fitted``). The balanced ones refit it once on the class-balanced
    training cells (:func:`fit_class_balanced`), since that refit reads no target cell. Every
    other adaptation acts on the features only, so ``fitted`` itself serves.

    Parameters
    ----------
    adaptation : str
        One of :data:`ADAPTATIONS`.
    model : classifier
        Unfitted; cloned for each refit.
    fitted : classifier
        ``model`` fitted on the training cells.
    X_train, y_train : ndarray of shape (n_train, n_features) and (n_train,)
    schedule : SelfTraining
    max_cells : int, optional
        The self-training cap (:func:`self_train`).
    """

    def __init__(self, adaptation: str, model, fitted, X_train: np.ndarray,
                 y_train: np.ndarray, schedule: SelfTraining, max_cells: int | None = None):
        self.adaptation = adaptation
        self.model = model
        self.fitted = fitted
        self.X_train, self.y_train = X_train, y_train
        self.schedule = schedule
        self.max_cells = max_cells
        self._balanced = None

    def model_for(self, X_target: np.ndarray):
        """The model that predicts ``X_target`` (n_target, n_features), one target domain's
        cells; an empty target leaves ``fitted`` as it is."""
        if not len(X_target):
            return self.fitted
        if self.adaptation in BALANCED:
            if self._balanced is None:
                self._balanced = fit_class_balanced(self.model, self.X_train, self.y_train,
                                                    BALANCED[self.adaptation])
            return self._balanced
        if self.adaptation not in SELF_TRAINING:
            return self.fitted
        return self_train(self.model, self.X_train, self.y_train, X_target, self.schedule,
                          fitted=self.fitted, max_cells=self.max_cells)
