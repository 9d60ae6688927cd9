"""How a target's labelled cells train beside the source's (dorl/classify/shots.py)."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from dorl.classify.shots import (
    ShotTraining,
    choose_ratio,
    cross_validated,
    source_subsample,
    training_rows,
)


def _two_labs(seed=0, n_source=200, n_target=200, shift=3.0):
    """Two classes in 2-d; in the target lab class 'b' sits where the source's 'a' is, so a
    model of the source's view misreads the target."""
    rng = np.random.default_rng(seed)
    y_src = np.repeat(["a", "b"], n_source // 2)
    X_src = rng.normal(0, 0.6, (n_source, 2)) + np.where(y_src == "a", 0, shift)[:, None]
    y_tgt = np.repeat(["a", "b"], n_target // 2)
    X_tgt = rng.normal(0, 0.6, (n_target, 2)) + np.where(y_tgt == "a", -shift, 0)[:, None]
    X, y = np.concatenate([X_src, X_tgt]), np.concatenate([y_src, y_tgt])
    source = np.arange(n_source)
    target = np.arange(n_source, n_source + n_target)
    return X, y, source, target


def _shots(y, target, k, seed=0):
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(target[y[target] == c], k, replace=False)
                                   for c in ("a", "b")]))


def test_each_route_keeps_its_ratio_of_source_cells_per_class():
    X, y, source, target = _two_labs()
    shots = _shots(y, target, 5)
    rng = np.random.default_rng(0)
    assert np.array_equal(source_subsample(source, shots, y, None, rng), source)
    assert len(source_subsample(source, shots, y, 0.0, rng)) == 0
    kept = source_subsample(source, shots, y, 4.0, rng)
    assert sorted(np.unique(y[kept], return_counts=True)[1]) == [20, 20]
    assert set(kept) <= set(source)
    rows = training_rows(source, shots, y, 1.0, rng)
    assert set(shots) <= set(rows) and len(rows) == 20
    # more than the source holds: all of it
    assert len(source_subsample(source, shots, y, 1000.0, rng)) == len(source)


def test_a_class_without_shots_is_still_learnt_from_the_source_and_one_class_never_trains():
    X, y, source, target = _two_labs()
    shots = np.sort(target[y[target] == "a"][:4])  # the lab gave shots to class a only
    rng = np.random.default_rng(0)
    kept = source_subsample(source, shots, y, 1.0, rng)
    assert sorted(np.unique(y[kept], return_counts=True)[1]) == [4, 4]
    alone = training_rows(source, shots, y, 0.0, rng)  # the shots alone: one class
    assert np.array_equal(alone, np.sort(np.concatenate([source, shots])))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_leaves_a_misleading_source_behind_and_scores_better_than_joining_it(seed):
    X, y, source, target = _two_labs(seed)
    shots = _shots(y, target, 5, seed)
    test = np.setdiff1d(target, shots)
    model = LogisticRegression()
    ratio = choose_ratio(model, X, y, source, shots, ShotTraining("auto", (None, 4.0, 1.0, 0.0)),
                         seed)
    assert ratio is not None

    def score(r):
        rows = training_rows(source, shots, y, r, np.random.default_rng(seed))
        return LogisticRegression().fit(X[rows], y[rows]).score(X[test], y[test])

    assert score(ratio) > score(None) + 0.2


def test_auto_keeps_the_source_when_it_agrees_with_the_lab():
    X, y, source, target = _two_labs(shift=3.0)
    X[target] = X[source]  # the target lab images the cells as the source does
    shots = _shots(y, target, 4)
    scores = cross_validated(LogisticRegression(), X, y, source, shots, (None, 0.0), 0)
    assert scores[None] >= scores[0.0] - 0.01
    assert choose_ratio(LogisticRegression(), X, y, source, shots,
                        ShotTraining("auto", (None, 0.0)), 0) is None


def test_a_single_shot_per_class_cannot_be_cross_validated_and_keeps_the_first_candidate():
    X, y, source, target = _two_labs()
    shots = _shots(y, target, 1)
    assert cross_validated(LogisticRegression(), X, y, source, shots, (None, 0.0), 0) is None
    training = ShotTraining("auto", (1.0, 0.0))
    assert choose_ratio(LogisticRegression(), X, y, source, shots, training, 0) == 1.0
    assert choose_ratio(LogisticRegression(), X, y, source, shots, ShotTraining(0.0), 0) == 0.0
