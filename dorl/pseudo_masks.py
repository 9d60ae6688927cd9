"""Training masks bootstrapped without labels: a colour segmentation kept only when it passes
quality checks.

White-cell nuclei and cytoplasm are blue-purple while red cells and background are pink to
white, so the CIELAB b* channel (blue-yellow) separates them: a three-class Otsu split gives
nucleus, cytoplasm and the rest. The cell is the cytoplasm-or-nucleus region connected to the
nucleus. A pseudo-mask is kept only when its area is plausible, it does not touch the border and
it is one convex-ish component; optionally (``min_agreement`` > 0) it must also agree with the
zero-shot SAM mask. The centre-box zero-shot LiteMedSAM mask agreed (Dice >= 0.85) with the colour
mask on only 2 of 40 Acevedo-20/LISC images, mostly because SAM spills into neighbouring red
cells, so agreement is off by default. No class label is used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2lab
from skimage.filters import threshold_multiotsu

from dorl.sam_eval import dice
from dorl.segment import border_fraction, clean_mask, predict_masks, resize_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudoMaskChecks:
    """Quality thresholds a pseudo-mask must pass (areas as fractions of the image)."""

    min_agreement: float = 0.0
    min_area: float = 0.03
    max_area: float = 0.6
    max_border: float = 0.0
    min_solidity: float = 0.9


def colour_mask(image: np.ndarray) -> np.ndarray:
    """Segment the white cell of an RGB image by colour (no model, no labels).

    Parameters
    ----------
    image : uint8 ndarray of shape (H, W, 3)

    Returns
    -------
    bool ndarray of shape (H, W)
        Nucleus plus cytoplasm, one component with holes filled; all False if no nucleus-like
        region is found.
    """
    blue = ndi.gaussian_filter(rgb2lab(image)[..., 2], 1.5)
    if np.ptp(blue) < 1e-3:
        return np.zeros(image.shape[:2], bool)
    nucleus_level, cell_level = threshold_multiotsu(blue, classes=3)
    nucleus = blue < nucleus_level
    labels, n = ndi.label(nucleus)
    if n == 0:
        return np.zeros(image.shape[:2], bool)
    sizes = np.bincount(labels.ravel())[1:]
    nucleus = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.2 * sizes.max()))
    candidate, _ = ndi.label(ndi.binary_opening(blue < cell_level, iterations=2))
    ids = np.unique(candidate[nucleus])
    cell = np.isin(candidate, ids[ids > 0])
    return clean_mask(ndi.binary_closing(cell, iterations=3))


def solidity(mask: np.ndarray) -> float:
    """Area of a boolean mask over the area of its convex hull (0 for an empty mask)."""
    from skimage.morphology import convex_hull_image

    if not mask.any():
        return 0.0
    return float(mask.sum() / convex_hull_image(mask).sum())


def check_pseudo_mask(colour: np.ndarray, sam_mask: np.ndarray,
                      checks: PseudoMaskChecks) -> str | None:
    """Return why a colour mask is rejected as a pseudo-mask, or None when it passes every check.

    ``sam_mask`` is only consulted when ``checks.min_agreement`` > 0.
    """
    area = colour.mean()
    if not checks.min_area <= area <= checks.max_area:
        return "area"
    if border_fraction(colour) > checks.max_border:
        return "border"
    if ndi.label(colour)[1] != 1 or solidity(colour) < checks.min_solidity:
        return "shape"
    if checks.min_agreement > 0 and dice(sam_mask, colour) < checks.min_agreement:
        return "disagree"
    return None


def bootstrap_pseudo_masks(images: list[np.ndarray], size: int, model=None, prompt: str = "center_box",
                           box_fraction: float = 0.9, batch_size: int = 16,
                           checks: PseudoMaskChecks = PseudoMaskChecks(),
                           ) -> tuple[list[np.ndarray | None], dict[str, int]]:
    """Make pseudo-masks for unlabelled images by colour segmentation and quality checks.

    Parameters
    ----------
    images : list of uint8 ndarray of shape (H_i, W_i, 3)
    size : int
        Side S the images are resized to (SAM's input size).
    model : dorl.sam_models.CellSAM, optional
        The zero-shot model; only run when ``checks.min_agreement`` > 0.
    prompt, box_fraction, batch_size : str, float, int
        How the zero-shot masks are made.
    checks : PseudoMaskChecks

    Returns
    -------
    masks : list of (bool ndarray of shape (S, S)) or None
        The colour mask where every check passes, else None.
    counts : dict
        ``kept`` and one count per rejection reason.
    """
    colours = [colour_mask(resize_image(image, size)) for image in images]
    sam_masks = [None] * len(images)
    if checks.min_agreement > 0:
        if model is None:
            raise ValueError("checks.min_agreement > 0 needs the zero-shot model")
        raw, _ = predict_masks(model, images, prompt, box_fraction, batch_size,
                               features="none", progress=True)
        sam_masks = [clean_mask(m) for m in raw]
    out, counts = [], {"kept": 0, "disagree": 0, "area": 0, "border": 0, "shape": 0}
    for colour, sam_mask in zip(colours, sam_masks):
        reason = check_pseudo_mask(colour, sam_mask, checks)
        counts[reason or "kept"] += 1
        out.append(None if reason else colour)
    logger.info("pseudo-masks: kept %d of %d (rejected: %s)", counts["kept"], len(images),
                {k: v for k, v in counts.items() if k != "kept"})
    return out, counts
