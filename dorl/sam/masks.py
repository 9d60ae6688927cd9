"""Operations on one boolean cell mask: cleaning, usability checks, boxes and the masked crop.

Scores of a mask against a truth live in :mod:`dorl.sam.metrics`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from dorl.resize import resize_image

#: Grey level written outside the cell mask and around crops that reach past the image.
GREY = 128
#: Margin around the mask's box, as a fraction of its longer side, kept in a crop.
CROP_MARGIN = 0.08


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component of a boolean (H, W) mask and fill its holes."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return ndi.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def border_fraction(mask: np.ndarray) -> float:
    """Fraction of the image's border pixels that a boolean (H, W) mask covers."""
    edges = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    return float(edges.mean())


def is_usable(mask: np.ndarray, min_area_frac: float, max_border_frac: float) -> bool:
    """Whether a cleaned mask is big enough and does not cover most of the border."""
    return mask.mean() >= min_area_frac and border_fraction(mask) <= max_border_frac


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Bounding box (x0, y0, x1, y1), float32 with exclusive upper bounds, of a non-empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def centre_box(size: int, fraction: float) -> np.ndarray:
    """The centred square box (x0, y0, x1, y1) covering ``fraction`` of each side of ``size``."""
    half = fraction * size / 2
    return np.array([size / 2 - half, size / 2 - half, size / 2 + half, size / 2 + half],
                    dtype=np.float32)


def masked_crop(image: np.ndarray, mask: np.ndarray | None, box: np.ndarray,
                crop_size: int) -> np.ndarray:
    """Cut ``box`` (with a margin) out of ``image``, grey outside ``mask``, resized to
    ``crop_size``.

    Parameters
    ----------
    image : uint8 ndarray of shape (S, S, 3)
    mask : bool ndarray of shape (S, S), or None to keep every pixel
    box : ndarray of shape (4,)
        x0, y0, x1, y1 in pixels of ``image``.
    crop_size : int

    Returns
    -------
    uint8 ndarray of shape (crop_size, crop_size, 3)
    """
    cell = image if mask is None else np.where(mask[..., None], image, np.uint8(GREY))
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * CROP_MARGIN)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    lo_x, lo_y = int(round(cx - side / 2)), int(round(cy - side / 2))
    n = max(int(round(side)), 1)
    canvas = np.full((n, n, 3), GREY, dtype=np.uint8)
    h, w = cell.shape[:2]
    sx0, sy0 = max(lo_x, 0), max(lo_y, 0)
    sx1, sy1 = min(lo_x + n, w), min(lo_y + n, h)
    canvas[sy0 - lo_y:sy1 - lo_y, sx0 - lo_x:sx1 - lo_x] = cell[sy0:sy1, sx0:sx1]
    return resize_image(canvas, crop_size)
