"""Per-cell quality control: is what segmentation found a white cell at all?

Each cell gets named checks; the first that fails is its ``qc_reason`` (empty when it passes):

* ``edge``: a cell cut from a whole field whose box touches the field's border (the cell is
  cut by the edge; :mod:`dorl.fields.cells`);
* ``aspect``: the image is a sliver (its long side over ``max_aspect`` times its short one);
* ``fallback``: SAM found no usable mask, and a centre crop stands in for the cell (a check
  while ``fail_on_fallback``; the feature file's ``seg_fallback`` flags it either way);
* ``low_iou``: SAM's own predicted IoU of the mask is under ``min_predicted_iou``;
* ``exposure``: the cell's brightness is implausible for a bright-field image: its 99th
  percentile under ``min_brightness`` (nearly black, e.g. high-bit data read at the wrong
  depth), or its 1st-to-99th percentile spread under ``min_contrast`` (flat: nearly white,
  nearly black or blank);
* ``no_stain``: under ``min_stained_fraction`` of the cell's pixels carry haematoxylin (optical
  density over ``stain_od``): a blank field, or only red cells, hold no stained nucleus;
* ``area``: the mask's area is more than ``area_ratio`` times off its domain's median cell.

Failed cells are embedded and kept in the feature file, flagged, but never trained or scored on
by default. The thresholds come from a rule on the source lab's cells (docs/reliability.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.color import rgb2hed

from dorl.config import ConfigError
from dorl.data.images import image_sizes
from dorl.data.manifest import Manifest
from dorl.fields.cells import at_edge
from dorl.sam.segmentation import Segmentation

REASONS = ("edge", "aspect", "fallback", "low_iou", "exposure", "no_stain", "area")
#: The segmentation store's crops show the background outside the mask in this grey; pixels
#: within this many levels of it in every channel (resampling blends the margin) are background.
BACKGROUND, BACKGROUND_TOLERANCE = 128, 6
#: A stained pixel's saturation ((max - min) / max of its channels) is at least this.
MIN_SATURATION = 0.15


@dataclass(frozen=True)
class QCSettings:
    """The ``qc`` config section."""

    enabled: bool
    fail_on_fallback: bool
    min_predicted_iou: float
    min_stained_fraction: float
    stain_od: float
    area_ratio: float
    max_aspect: float
    min_brightness: float
    min_contrast: float

    @classmethod
    def from_config(cls, cfg) -> "QCSettings":
        q = cfg.qc
        settings = cls(bool(q.enabled), bool(q.fail_on_fallback), float(q.min_predicted_iou),
                       float(q.min_stained_fraction), float(q.stain_od), float(q.area_ratio),
                       float(q.max_aspect), float(q.min_brightness), float(q.min_contrast))
        if not 0 <= settings.min_stained_fraction < 1 or settings.area_ratio <= 1 \
                or settings.max_aspect < 1 or not 0 <= settings.min_predicted_iou < 1 \
                or not 0 <= settings.min_brightness <= 255 \
                or not 0 <= settings.min_contrast <= 255:
            raise ConfigError(f"qc: needs 0 <= min_stained_fraction < 1, 0 <= min_predicted_iou "
                              f"< 1, area_ratio > 1, max_aspect >= 1 and min_brightness and "
                              f"min_contrast within [0, 255], got {settings}")
        return settings


def _cell_pixels(crop: np.ndarray) -> np.ndarray:
    """Which pixels of a masked crop are the cell's (not the background grey), bool (h, w)."""
    return ~np.all(np.abs(crop.astype(np.int16) - BACKGROUND) <= BACKGROUND_TOLERANCE, axis=-1)


def brightness_range(crop: np.ndarray) -> tuple[float, float]:
    """The 99th percentile of a masked crop's cell pixels' brightness (the mean of their
    channels, 0..255) and its spread from the 1st percentile; (0, 0) without cell pixels."""
    cell = _cell_pixels(crop)
    if not cell.any():
        return 0.0, 0.0
    low, high = np.percentile(crop[cell].mean(axis=-1), [1, 99])
    return float(high), float(high - low)


def stained_fraction(crop: np.ndarray, stain_od: float) -> float:
    """The share of a masked crop's cell pixels (those not the background grey) whose
    haematoxylin optical density exceeds ``stain_od``; 0 without cell pixels."""
    pixels = crop.astype(np.int16)
    cell = _cell_pixels(crop)
    if not cell.any():
        return 0.0
    # Grey has haematoxylin optical density too: a stained pixel must also be coloured.
    brightest = pixels.max(axis=-1)
    coloured = (brightest - pixels.min(axis=-1)) > MIN_SATURATION * np.maximum(brightest, 1)
    stained = (rgb2hed(crop)[..., 0] > stain_od) & coloured
    return float(stained[cell].mean())


def at_field_edge(manifest: Manifest) -> np.ndarray:
    """Bool (n,): the cells cut from a field (``field`` and ``box`` set) whose box touches the
    field's border; the fields' sizes come from their headers."""
    table = manifest.table
    edge = np.zeros(len(table), bool)
    if "field" not in table:
        return edge
    fields = table["field"].astype(str).to_numpy()
    rows = np.flatnonzero(fields != "")
    if len(rows):
        sizes = image_sizes(manifest.base_dir / fields[i] for i in rows)
        boxes = [np.array(table["box"].iloc[i].split(), float) for i in rows]
        edge[rows] = [at_edge(box, int(w), int(h)) for box, (w, h) in zip(boxes, sizes)]
    return edge


def cell_quality(manifest: Manifest, seg: Segmentation, settings: QCSettings
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's ``qc_pass`` (bool, n) and ``qc_reason`` (str, n; "" when it passes).

    Reads the segmentation's masked crops and masks a block at a time and the images' headers.
    """
    n = len(manifest)
    reasons = np.full(n, "", dtype=object)
    if not settings.enabled:
        return np.ones(n, bool), reasons.astype(str)
    sizes = image_sizes(manifest.image_path(i) for i in range(n))
    aspect = sizes.max(axis=1) / np.maximum(sizes.min(axis=1), 1)
    stained, area, bright, spread = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    for start in range(0, n, 256):
        rows = np.arange(start, min(start + 256, n))
        crops = np.asarray(seg.crops[rows])
        masks = np.asarray(seg.masks[rows], bool)
        area[rows] = masks.reshape(len(rows), -1).mean(1)
        stained[rows] = [stained_fraction(c, settings.stain_od) for c in crops]
        bright[rows], spread[rows] = np.asarray([brightness_range(c) for c in crops]).T
    domains = manifest.table["domain"].astype(str).to_numpy()
    fallback = np.asarray(seg.fallback, bool)
    off_area = np.zeros(n, bool)
    for domain in np.unique(domains):
        own = (domains == domain) & ~fallback
        if own.any():
            median = float(np.median(area[own]))
            ratio = area / max(median, 1e-9)
            off_area |= (domains == domain) & ((ratio > settings.area_ratio)
                                               | (ratio < 1 / settings.area_ratio))
    # NaN (masks that did not come from SAM) passes: SAM's estimate is not about them.
    iou = np.asarray(seg.predicted_iou, np.float64)
    checks = {"edge": at_field_edge(manifest),
              "fallback": fallback & settings.fail_on_fallback,
              "low_iou": ~fallback & (iou < settings.min_predicted_iou),
              "aspect": aspect > settings.max_aspect,
              "exposure": (bright < settings.min_brightness) | (spread < settings.min_contrast),
              "no_stain": stained < settings.min_stained_fraction, "area": off_area}
    for name in reversed(REASONS):  # the first failing check in REASONS names the cell
        reasons[checks[name]] = name
    reasons = reasons.astype(str)
    return reasons == "", reasons
