"""The cell crop every encoder reads: the segmented cell, masked, cut from the original image at
its own resolution and scaled to ``features.crop_size`` (optionally resampled through a coarser
side first, ``features.resolution``)."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from dorl.data.images import read_rgb
from dorl.data.manifest import Manifest
from dorl.features.resolution import crop_side
from dorl.resize import resize_image, resize_mask
from dorl.sam.masks import masked_crop
from dorl.sam.segmentation import Segmentation


def cell_crop(image: np.ndarray, mask: np.ndarray | None, box: np.ndarray, seg_size: int,
              size: int, max_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The masked cell at the original image's resolution, scaled to ``size``.

    Parameters
    ----------
    image : uint8 ndarray of shape (H, W, 3)
        The original image.
    mask : bool ndarray of shape (S, S), or None
        The cell's mask at segmentation's input side ``seg_size`` (None: keep every pixel).
    box : ndarray of shape (4,)
        Its box (x0, y0, x1, y1) in the same ``seg_size`` frame.
    seg_size, size : int
    max_side : int, optional
        Resample the cell through at most this many pixels across its crop before scaling it
        to ``size`` (``features.resolution``, :mod:`dorl.features.resolution`).

    Returns
    -------
    crop : uint8 ndarray of shape (size, size, 3)
    crop_mask : bool ndarray of shape (size, size)
        The cell's pixels in the crop.
    """
    side = max(image.shape[:2])  # segmentation saw the image stretched to a square
    box = box * (side / seg_size)
    through = size
    if max_side is not None and max_side < size and crop_side(box) > max_side:
        through = max_side
    big = resize_image(image, side)
    big_mask = None if mask is None else resize_mask(mask, side)
    crop = masked_crop(big, big_mask, box, through)
    if through != size:
        crop = resize_image(crop, size)
    if mask is None:
        return crop, np.ones((size, size), bool)
    # The mask cut the same way: 255 inside, 0 outside, the crop's grey (128) beyond the image.
    mask_rgb = np.repeat((big_mask * np.uint8(255))[..., None], 3, axis=-1)
    crop_mask = masked_crop(mask_rgb, None, box, size)[..., 0] > 191
    return crop, crop_mask


def cell_crops(manifest: Manifest, seg: Segmentation, size: int,
               rows: np.ndarray | None = None, progress: bool = True,
               max_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cell_crop` of the manifest ``rows`` (default: all): crops (n, size, size, 3),
    masks (n, size, size)."""
    rows = np.arange(len(manifest)) if rows is None else np.asarray(rows, int)
    seg_size = seg.masks.shape[1]
    crops = np.empty((len(rows), size, size, 3), np.uint8)
    masks = np.empty((len(rows), size, size), bool)
    seg_masks = np.asarray(seg.masks[rows], bool)  # one read of the rows' masks
    for k, i in enumerate(tqdm(rows, desc="cell crops", unit="img", disable=not progress)):
        mask = None if seg.fallback[i] else seg_masks[k]
        crops[k], masks[k] = cell_crop(read_rgb(manifest.image_path(i)), mask, seg.boxes[i],
                                       seg_size, size, max_side)
    return crops, masks
