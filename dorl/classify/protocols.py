"""Evaluation protocols: which cells each model trains on and which cells it is scored on.

Four protocols, all over the labelled cells (``unknown`` cells are removed before this module):

* ``source_target``: for every source domain, a stratified k-fold on the source. Each fold model
  is scored on every *other* domain in full (cross-domain), as in the DoRL / BC-SAM notebooks.
* ``in_domain``: the held-out source fold of those same fold models. When ``source_target`` is
  also asked for, the two share one set of fits, so in-domain and cross-domain numbers come from
  the same fold models. A labelled lab that is not a source gets the same k-fold inside it,
  scored only there: the in-lab ceiling its cross-lab scores are read against.
* ``lodo``: leave one domain out: train on all other domains, score on the held-out one.
* ``target_labels`` (added when the user labelled target cells, ``classify.target_labels``):
  for every source and every other domain holding user-labelled cells, those cells join the
  source's training cells, and the model is scored on the domain's other labelled cells.
* ``few_shot``: for every source and every other domain, ``k`` labelled cells per class of that
  target join the source's training cells, and the model is scored on the target's remaining
  cells: what a lab gets after labelling a handful of its own cells. Several random draws per
  ``k``; within a draw the shots are nested (the 5 cells of ``k=5`` hold the cell of ``k=1``). A
  class with ``k`` or fewer cells (groups) in the target gets no shots and is still scored.

When obs holds near-duplicate groups (``group`` values shared by several cells), k-folds are
group-aware, few-shot draws pick groups (one cell each) and drop the rest of a drawn group from
the test set, and no test cell shares a group with a training cell.

A training set larger than ``max_train`` is cut to a class-stratified random subsample of that
size (kernel SVMs grow quadratically with it; classical models on 50-d embeddings gain little
beyond a few thousand cells). Test sets are never cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from dorl.errors import InputError

PROTOCOLS = ("source_target", "in_domain", "lodo", "few_shot")
#: The protocol of the user's own labelled target cells (not chosen in ``classify.protocols``).
TARGET_LABELS = "target_labels"


class ProtocolError(InputError, ValueError):
    """A protocol cannot be run on the given cells (unknown name, too few domains or cells)."""


@dataclass(frozen=True)
class Evaluation:
    """One scored test set of a fitted model.

    Attributes
    ----------
    protocol : str
        One of :data:`PROTOCOLS`.
    target : str
        The domain the test cells come from.
    test : ndarray of shape (n_test,), int
        Row indices of the test cells.
    shots : int
        Labelled target cells per class in the training set (``few_shot``; 0 otherwise).
    """

    protocol: str
    target: str
    test: np.ndarray
    shots: int = 0


@dataclass(frozen=True)
class Split:
    """One model fit and the test sets it is scored on.

    Attributes
    ----------
    source : str
        The training domain(s), ``+``-joined for leave-one-domain-out.
    fold : int
        Fold number within the source (0 for leave-one-domain-out, the draw for few-shot).
    train : ndarray of shape (n_train,), int
        Row indices of the training cells.
    evaluations : tuple of Evaluation
    labelled_target : ndarray of shape (n_shots,), int
        The rows of ``train`` that are the target's labelled cells (``few_shot``,
        ``target_labels``; empty otherwise): how they train beside the source's is
        ``classify.shot_training`` (:mod:`dorl.classify.shots`).
    """

    source: str
    fold: int
    train: np.ndarray
    evaluations: tuple[Evaluation, ...]
    labelled_target: np.ndarray = field(default_factory=lambda: np.empty(0, int))


def has_groups(groups: np.ndarray | None) -> bool:
    """Return True when some group id is shared by more than one cell."""
    if groups is None or len(groups) == 0:
        return False
    return len(np.unique(groups)) < len(groups)


def _without_groups(test: np.ndarray, train: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Drop from ``test`` every row whose group also occurs in ``train``."""
    if groups is None:
        return test
    return test[~np.isin(groups[test], groups[train])]


def cap_train(train: np.ndarray, labels: np.ndarray, max_train: int | None,
              rng: np.random.Generator) -> np.ndarray:
    """Return at most ``max_train`` rows of ``train``, keeping each class's share (>= 1 row).

    Parameters
    ----------
    train : ndarray of shape (n_train,), int
        Row indices.
    labels : ndarray of shape (n_cells,)
        Labels of all rows.
    max_train : int or None
        None keeps every row.
    rng : numpy Generator

    Returns
    -------
    ndarray of shape (min(n_train, ~max_train),), int, sorted
    """
    if max_train is None or len(train) <= max_train:
        return train
    classes, codes = np.unique(labels[train], return_inverse=True)
    keep = []
    for c in range(len(classes)):
        rows = train[codes == c]
        take = max(1, int(round(len(rows) * max_train / len(train))))
        keep.append(rng.choice(rows, size=min(take, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))


def kfold(labels: np.ndarray, groups: np.ndarray | None, n_folds: int, seed: int,
          domain: str = "the data"):
    """Stratified (group-aware when groups repeat) k-fold splits of the rows of ``labels``,
    the labelled cells of ``domain`` (named when there are too few)."""
    if len(labels) < n_folds:
        counts = ", ".join(f"{k} {c}" for c, k in zip(*np.unique(labels, return_counts=True)))
        raise ProtocolError(
            f"domain {domain!r} has {len(labels)} labelled cell(s) left ({counts or 'none'}), "
            f"too few for {n_folds} folds: cells that failed per-cell QC (qc_pass false) and "
            f"unknown labels are left out; lower classify.n_folds, or set "
            f"classify.keep_qc_failed=true to keep the QC-failed cells")
    if has_groups(groups):
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        return splitter.split(np.zeros(len(labels)), labels, groups)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return splitter.split(np.zeros(len(labels)), labels)


def make_splits(labels: np.ndarray, domains: np.ndarray, protocols: Sequence[str], n_folds: int,
                seed: int, groups: np.ndarray | None = None,
                max_train: int | None = None,
                sources: Sequence[str] | None = None, shots: Sequence[int] = (1, 5, 10, 25),
                draws: int = 5, user_labelled: np.ndarray | None = None) -> Iterator[Split]:
    """Yield the model fits that the requested protocols need.

    Parameters
    ----------
    labels : ndarray of shape (n_cells,), str
        Class labels (no ``unknown`` cells).
    domains : ndarray of shape (n_cells,), str
    protocols : sequence of str
        A subset of ``PROTOCOLS``.
    n_folds : int
        Folds of the stratified k-fold on each source domain.
    seed : int
        ``random_state`` of the fold shuffling.
    groups : ndarray of shape (n_cells,), optional
        Near-duplicate group ids; cells sharing one never land on both sides of a split.
    max_train : int, optional
        Cap on training cells per fit (see :func:`cap_train`; subsampling seeded by ``seed``).
    sources : sequence of str, optional
        The domains ``source_target``, ``in_domain`` and ``few_shot`` train on (default: every
        domain), e.g. the labs whose labels may be used.
    shots : sequence of int, default=(1, 5, 10, 25)
        ``few_shot``: labelled target cells per class.
    draws : int, default=5
        ``few_shot``: random draws per number of shots.
    user_labelled : bool ndarray of shape (n_cells,), optional
        Cells the user labelled: the ``target_labels`` splits train on them, and no
        evaluation scores them.

    Yields
    ------
    Split
    """
    for split in _splits(labels, domains, protocols, n_folds, seed, groups, max_train, sources,
                         shots, draws, user_labelled):
        if user_labelled is None:
            yield split
            continue
        yield Split(split.source, split.fold, split.train, tuple(
            Evaluation(e.protocol, e.target, e.test[~user_labelled[e.test]], e.shots)
            for e in split.evaluations), split.labelled_target)


def _splits(labels, domains, protocols, n_folds, seed, groups, max_train, sources, shots, draws,
            user_labelled) -> Iterator[Split]:
    """:func:`make_splits` before the user-labelled cells leave the test sets."""
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ProtocolError(f"unknown protocol(s) {unknown}; choose from {list(PROTOCOLS)}")
    names = sorted(np.unique(domains))
    rng = np.random.default_rng(seed)
    cross = "source_target" in protocols
    within = "in_domain" in protocols
    if (cross or "lodo" in protocols) and len(names) < 2:
        raise ProtocolError(f"cross-domain protocols need at least 2 domains, found {names}")
    unknown = sorted(set(sources or ()) - set(names))
    if unknown:
        raise ProtocolError(f"classify.sources names {unknown}, which are not among the "
                            f"domains {names}")
    if cross or within:
        for source in [n for n in names if not sources or n in sources]:
            rows = np.flatnonzero(domains == source)
            others = [(t, np.flatnonzero(domains == t)) for t in names if t != source]
            sub_groups = None if groups is None else groups[rows]
            for fold, (tr, te) in enumerate(kfold(labels[rows], sub_groups, n_folds, seed,
                                                  source)):
                train = cap_train(rows[tr], labels, max_train, rng)
                evals = []
                if within:
                    evals.append(Evaluation("in_domain", source, rows[te]))
                if cross:
                    evals += [Evaluation("source_target", t, _without_groups(r, train, groups))
                              for t, r in others]
                yield Split(source, fold, train, tuple(evals))
    if within and sources:
        # Every other labelled lab's in-lab ceiling: the same k-fold inside it, scored only
        # there (when sources are not restricted, each lab is a source and has it already).
        for lab in [n for n in names if n not in sources]:
            rows = np.flatnonzero(domains == lab)
            if len(rows) < n_folds or len(set(labels[rows])) < 2:
                continue  # nothing a classifier can learn inside it
            sub_groups = None if groups is None else groups[rows]
            for fold, (tr, te) in enumerate(kfold(labels[rows], sub_groups, n_folds, seed, lab)):
                yield Split(lab, fold, cap_train(rows[tr], labels, max_train, rng),
                            (Evaluation("in_domain", lab, rows[te]),))
    if "lodo" in protocols:
        for held_out in names:
            train = cap_train(np.flatnonzero(domains != held_out), labels, max_train, rng)
            test = _without_groups(np.flatnonzero(domains == held_out), train, groups)
            source = "+".join(n for n in names if n != held_out)
            yield Split(source, 0, train, (Evaluation("lodo", held_out, test),))
    if user_labelled is not None and user_labelled.any():
        for source in [n for n in names if not sources or n in sources]:
            source_train = cap_train(np.flatnonzero((domains == source) & ~user_labelled),
                                     labels, max_train, rng)
            for target in [n for n in names if n != source]:
                chosen = np.flatnonzero((domains == target) & user_labelled)
                if not len(chosen):
                    continue
                train = np.sort(np.concatenate([source_train, chosen]))
                test = _without_groups(np.flatnonzero((domains == target) & ~user_labelled),
                                       train, groups)
                per_class = int(round(len(chosen) / len(set(labels[chosen]))))
                yield Split(source, 0, train, (Evaluation(TARGET_LABELS, target, test,
                                                          per_class),), chosen)
    if "few_shot" in protocols:
        if len(names) < 2:
            raise ProtocolError(f"few_shot needs at least 2 domains, found {names}")
        for source in [n for n in names if not sources or n in sources]:
            source_train = cap_train(np.flatnonzero(domains == source), labels, max_train, rng)
            for target in [n for n in names if n != source]:
                yield from _few_shot(source, source_train, target, labels, domains, groups,
                                     shots, draws, rng)


def _few_shot(source: str, source_train: np.ndarray, target: str, labels: np.ndarray,
              domains: np.ndarray, groups: np.ndarray | None, shots: Sequence[int], draws: int,
              rng: np.random.Generator) -> Iterator[Split]:
    """The few-shot fits of one source and one target: ``draws`` x ``len(shots)`` splits."""
    rows = np.flatnonzero(domains == target)
    cell_groups = rows.astype(str) if groups is None else groups[rows]
    classes = sorted(set(labels[rows]))
    for draw in range(draws):
        # One shuffled list of groups per class and draw; k shots take its first k groups,
        # one cell of each.
        order = {}
        for c in classes:
            members = rows[labels[rows] == c]
            shuffled = rng.permutation(len(members))
            # One random cell per group (its first in the shuffle), then the groups in random
            # order: O(n log n) in the class's cells.
            groups_of, first = np.unique(cell_groups[labels[rows] == c][shuffled],
                                         return_index=True)
            order_of_groups = rng.permutation(len(groups_of))
            order[c] = (groups_of[order_of_groups], members[shuffled[first[order_of_groups]]])
        for k in sorted(shots):
            chosen_groups, chosen = [], []
            for picked, first in order.values():
                if len(picked) > k:  # leave at least one group of the class to test on
                    chosen_groups += list(picked[:k])
                    chosen += list(first[:k])
            chosen = np.asarray(chosen, dtype=int)
            test = rows[~np.isin(cell_groups, chosen_groups)]
            train = np.sort(np.concatenate([source_train, chosen]))
            yield Split(source, draw, train, (Evaluation("few_shot", target, test, int(k)),),
                        chosen)
