"""Every score of detected white-cell boxes against a field's box file, in one module.

Boxes are float arrays of shape (n, 4), ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` (n, 4) with every box of ``b`` (m, 4),
    shape (n, m)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_boxes(detected: np.ndarray, truth: np.ndarray, min_iou: float = 0.5
                ) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of one field: each true box matches
    at most one detection, greedily by IoU (highest first), when their IoU is ``min_iou`` or
    more."""
    iou = box_iou(detected, truth)
    pairs = np.argwhere(iou >= min_iou)
    pairs = pairs[np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")]
    used_d, used_t = set(), set()
    for d, t in pairs:
        if d not in used_d and t not in used_t:
            used_d.add(d)
            used_t.add(t)
    tp = len(used_d)
    return tp, len(detected) - tp, len(truth) - tp


@dataclass(frozen=True)
class DetectionScores:
    """Detection over many fields: counts, precision, recall and F1 at one IoU."""

    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return 1.0 if found == 0 else self.true_positives / found

    @property
    def recall(self) -> float:
        real = self.true_positives + self.false_negatives
        return 1.0 if real == 0 else self.true_positives / real

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def detection_scores(detected: list[np.ndarray], truth: list[np.ndarray],
                     min_iou: float = 0.5) -> DetectionScores:
    """Scores summed over fields (``detected[i]`` and ``truth[i]`` are one field's boxes)."""
    counts = np.array([match_boxes(d, t, min_iou) for d, t in zip(detected, truth)]
                      ).reshape(-1, 3).sum(axis=0)
    return DetectionScores(*(int(c) for c in counts))
