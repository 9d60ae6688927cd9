"""Every score the classify stage reports of a classifier's predictions, in one place.

Policy (stated in every report): macro averages use an explicit label list and
``zero_division=0``; a class with fewer than ``classify.min_class_count`` cells in a target
domain is left out of that target's scores (:func:`kept_classes`); ``scope=shared`` scores only
the classes both the training cells and the target hold, ``scope=full`` every kept target class,
with ``ceiling_accuracy`` / ``ceiling_macro_f1`` the best score reachable there.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def kept_classes(labels: np.ndarray, min_count: int) -> list[str]:
    """Classes of ``labels`` (a target domain's cells) with at least ``min_count`` cells."""
    names, counts = np.unique(labels, return_counts=True)
    return [str(n) for n, c in zip(names, counts) if c >= min_count]


def _per_class(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> tuple:
    """Precision, recall, F1 and support of each of ``labels``, each an ndarray of shape
    (n_labels,); 0 where undefined (sklearn's ``zero_division=0``). Counted directly: sklearn's
    checks on every call took most of a classify run's scoring time."""
    true_is = np.asarray(y_true)[:, None] == np.asarray(labels)[None, :]
    pred_is = np.asarray(y_pred)[:, None] == np.asarray(labels)[None, :]
    hits = (true_is & pred_is).sum(axis=0)
    support, predicted = true_is.sum(axis=0), pred_is.sum(axis=0)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros(len(labels)), where=den > 0)

    return ratio(hits, predicted), ratio(hits, support), ratio(2 * hits, predicted + support), \
        support


def score(y_true: np.ndarray, y_pred: np.ndarray, train_classes: Iterable[str],
          target_classes: Iterable[str]) -> list[dict[str, Any]]:
    """Score predictions on the ``shared`` and ``full`` class scopes.

    Parameters
    ----------
    y_true, y_pred : ndarray of shape (n_test,), str
    train_classes : iterable of str
        Classes the model was trained on.
    target_classes : iterable of str
        Classes kept in the target (see :func:`kept_classes`).

    Returns
    -------
    list of dict
        Rows with keys ``scope, metric, label, value, n_test`` (``label`` is empty except for
        per-class ``precision``, ``recall`` and ``f1``).
    """
    train = set(train_classes)
    target = sorted(target_classes)
    rows: list[dict[str, Any]] = []
    for scope, labels in (("shared", [c for c in target if c in train]), ("full", target)):
        mask = np.isin(y_true, labels)
        if not labels or not mask.any():
            continue
        t, p = y_true[mask], y_pred[mask]
        prec, rec, f1, support = _per_class(t, p, labels)
        present = support > 0
        values = {
            "macro_f1": f1[present].mean(),
            "accuracy": float((t == p).mean()),
            "balanced_accuracy": rec[present].mean(),
            "weighted_f1": float((f1 * support).sum() / support.sum()),
        }
        if scope == "full":
            values["ceiling_accuracy"] = float(np.isin(t, list(train)).mean())
            values["ceiling_macro_f1"] = float(np.isin(np.array(labels)[present],
                                                       list(train)).mean())
        rows += [{"scope": scope, "metric": m, "label": "", "value": float(v), "n_test": len(t)}
                 for m, v in values.items()]
        for name, per_class in (("precision", prec), ("recall", rec), ("f1", f1)):
            rows += [{"scope": scope, "metric": name, "label": c, "value": float(v),
                      "n_test": int(n)}
                     for c, v, n in zip(labels, per_class, support) if n > 0]
    return rows
