"""Every score of a predicted cell mask against a ground-truth mask, in one module.

Masks are boolean arrays of one shape. Two empty masks agree perfectly (score 1.0).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks of the same shape (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def precision(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of the predicted pixels that are in the truth (1.0 for an empty prediction)."""
    n = int(pred.sum())
    return 1.0 if n == 0 else float(np.logical_and(pred, truth).sum() / n)


def recall(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of the true pixels that the prediction covers (1.0 for an empty truth)."""
    n = int(truth.sum())
    return 1.0 if n == 0 else float(np.logical_and(pred, truth).sum() / n)


def mask_scores(preds: Iterable[np.ndarray], truths: Iterable[np.ndarray]) -> dict[str, float]:
    """Summary of paired masks: ``n``, mean and std of Dice, its 10th percentile, mean IoU,
    precision and recall."""
    rows = np.array([(dice(p, t), iou(p, t), precision(p, t), recall(p, t))
                     for p, t in zip(preds, truths)], dtype=np.float64).reshape(-1, 4)
    if not len(rows):
        return {"n": 0}
    return {"n": len(rows), "dice": float(rows[:, 0].mean()), "dice_std": float(rows[:, 0].std()),
            "dice_p10": float(np.percentile(rows[:, 0], 10)), "iou": float(rows[:, 1].mean()),
            "precision": float(rows[:, 2].mean()), "recall": float(rows[:, 3].mean())}
