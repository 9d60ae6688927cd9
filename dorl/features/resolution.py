"""One imaging resolution for every lab: a crop's detail capped at the coarsest lab's.

Each cell is cut at its own image's resolution and scaled to ``features.crop_size``, so a lab
whose cells span fewer pixels (a lower magnification, a coarser camera) gives crops that are
upsampled further and carry less detail: nuclear lobes merge and granules fade. A classifier
trained on a sharper lab then reads detail the other lab's cells do not have.

``features.resolution`` chooses what the crops carry:

* ``native``: every cell at its own resolution (the crop is resized straight from it);
* ``coarsest``: every cell resampled through at most :func:`coarsest_side` pixels, the median
  native crop side of the domain whose cells span the fewest pixels, so that every lab is
  seen at the resolution of the coarsest one. Label-free: it reads only segmentation boxes and
  image sizes;
* an integer: that side, fixed (``dorl apply`` uses the side of the run it applies, so that a
  new lab's cells are seen at the resolution the classifiers were trained on).
"""

from __future__ import annotations

import numpy as np

from dorl.config import ConfigError
from dorl.data.images import image_sizes
from dorl.data.manifest import Manifest
from dorl.resize import resize_batch
from dorl.sam.masks import CROP_MARGIN
from dorl.sam.segmentation import Segmentation

MODES = ("native", "coarsest")


def parse_resolution(value) -> str | int:
    """``features.resolution`` as ``"native"``, ``"coarsest"`` or a side in pixels (>= 8).

    Raises
    ------
    ConfigError
        For any other value.
    """
    if isinstance(value, str) and value in MODES:
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 8:
        return int(value)
    raise ConfigError(f"features.resolution must be one of {list(MODES)} or a side in pixels "
                      f"(an integer >= 8), got {value!r}")


def crop_side(boxes: np.ndarray) -> np.ndarray:
    """The side of the square crop :func:`dorl.sam.masks.masked_crop` cuts around ``boxes``
    (..., 4) (x0, y0, x1, y1): the longer box side plus the crop margin on both ends."""
    boxes = np.asarray(boxes, np.float64)
    return (np.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])
            * (1 + 2 * CROP_MARGIN))


def native_crop_sides(manifest: Manifest, seg: Segmentation) -> np.ndarray:
    """The side, in pixels of its original image, of each cell's crop (its box with the crop
    margin), float64 of shape (len(manifest),).

    Only the image headers are read. Segmentation saw each image stretched to a square of its
    longer side, as :func:`dorl.features.crops.cell_crop` does.
    """
    sizes = image_sizes(manifest.image_path(i) for i in range(len(manifest)))
    return crop_side(seg.boxes) * sizes.max(axis=1) / seg.masks.shape[1]


def coarsest_side(sides: np.ndarray, domains: np.ndarray) -> int:
    """The smallest of the domains' median crop sides ``sides``, in pixels."""
    domains = np.asarray(domains).astype(str)
    medians = [float(np.median(sides[domains == d])) for d in np.unique(domains)]
    return max(int(round(min(medians))), 1)


def resolution_side(setting: str | int, manifest: Manifest, seg: Segmentation) -> int | None:
    """The side every crop is resampled through under ``features.resolution`` = ``setting``
    (None: native resolution)."""
    if setting == "native":
        return None
    if setting == "coarsest":
        domains = manifest.table["domain"].astype(str).to_numpy()
        return coarsest_side(native_crop_sides(manifest, seg), domains)
    return int(setting)


def resample_through(crops: np.ndarray, sides: np.ndarray) -> np.ndarray:
    """``crops`` (n, S, S, 3) uint8, each downsized to its ``sides`` pixels and back to S: the
    crop a cell gives when its image carries only that many pixels across it. Sides at or above
    S leave a crop as it is."""
    out = np.array(crops, copy=True)
    size = crops.shape[1]
    sides = np.maximum(np.round(np.asarray(sides, np.float64)).astype(int), 1)
    for side in np.unique(sides[sides < size]):
        rows = np.flatnonzero(sides == side)
        out[rows] = resize_batch(resize_batch(crops[rows], int(side)), size)
    return out
