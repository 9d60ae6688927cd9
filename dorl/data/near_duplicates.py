"""Grouping near-duplicate images (shifted crops of the same cell) by perceptual hash.

A group id shared by near-duplicates lets stage 2 keep copies of one cell on the same side of
every split. No labels are used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from dorl.data.images import read_rgb

logger = logging.getLogger(__name__)


def dhash(image: np.ndarray, size: int = 8) -> np.ndarray:
    """Difference hash of an RGB image: ``size * size`` booleans (horizontal gradient signs)."""
    grey = Image.fromarray(image).convert("L").resize((size + 1, size), Image.BILINEAR)
    arr = np.asarray(grey, dtype=np.int16)
    return (arr[:, 1:] > arr[:, :-1]).ravel()


def group_near_duplicates(paths: Sequence[str | Path], max_distance: int = 6) -> list[str]:
    """Return a group id per image: images whose dHash differ in <= ``max_distance`` of 64 bits
    are joined (transitively), so shifted crops of one cell share an id.

    The id is the first path of each group (in input order).
    """
    hashes = np.stack([dhash(read_rgb(p)) for p in paths]).astype(np.uint8)
    n = len(hashes)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n - 1):
        dist = (hashes[i + 1:] != hashes[i]).sum(axis=1)
        for j in np.nonzero(dist <= max_distance)[0] + i + 1:
            a, b = find(i), find(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots = [find(i) for i in range(n)]
    n_groups = len(set(roots))
    logger.info("near-duplicate grouping: %d images in %d groups (dHash distance <= %d)", n,
                n_groups, max_distance)
    return [str(paths[r]) for r in roots]
