"""Label-free white-cell detection in a whole field: nuclei by stain, grouped into cells.

1. A nucleus-stain candidate map (:data:`CANDIDATE_MAPS`). ``green_od``: a pixel's green optical
   density above the field's typical green (its median over the lit field) exceeds
   ``min_od``, and the pixel is coloured (saturation over :data:`MIN_SATURATION`): Romanowsky
   stains (Giemsa, Wright, May-Grünwald-Giemsa) turn nuclei a dark purple that absorbs green
   far more than red cells, platelets' pale granules or the background do.
   ``haematoxylin``: the haematoxylin channel of the colour deconvolution (Ruifrok & Johnston)
   over Otsu's threshold within the lit field, the alternative it is compared with.
2. Components of the map, after closing one-pixel gaps. Their size bounds are learnt from the
   lab's own candidates (:func:`learn_size_bounds`): white-cell nuclei are the large ones,
   platelets and stain specks the small ones. A nucleus is compact: its stained pixels fill a
   quarter of its box at least, and it spans at most three typical nucleus sides.
3. A cell's lobes (a neutrophil's segmented nucleus) join when they lie within a fraction of
   the typical nucleus side of each other; each cell's box is its nucleus's box, widened by
   ``margin`` of its side on every side for the cytoplasm. Touching nuclei are split between
   them; a clump of more than :data:`MAX_CLUMP_NUCLEI` is left out and reported.

The field's unlit border (a microscope's round field stop) is left out: pixels darker than a
quarter of the field's bright level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu

CANDIDATE_MAPS = ("green_od", "haematoxylin")
#: A nucleus pixel is coloured: (max - min) / max of its channels at least this.
MIN_SATURATION = 0.3
#: A nucleus's stained pixels fill at least this share of its box.
MIN_FILL = 0.25
#: A cell's nucleus spans at most this many typical nucleus sides.
MAX_SIDE = 3.0
#: Pixels darker than this fraction of the field's bright level (its 95th percentile) are the
#: unlit border.
UNLIT = 0.25
#: More nucleus-sized parts than this in one touching group is a clump (a smear's thick edge, a
#: cluster of cells): too dense to cut into single cells by the nearest-nucleus split, so it is
#: left out and named (:class:`Detection`'s ``clumps``).
MAX_CLUMP_NUCLEI = 12


@dataclass(frozen=True)
class DetectionSettings:
    """How white cells are found in a field.

    Attributes
    ----------
    candidates : str
        One of :data:`CANDIDATE_MAPS`.
    min_od : float
        ``green_od``: the least green optical density over the field's typical green. 0.7 was
        chosen on the pig fields' development split; their other split, imaged zoomed out with
        paler nuclei, needs far less, so it is not yet a setting that travels between labs
        (docs/benchmarks.md, "White cells in whole fields").
    margin : float
        Each box widened by this fraction of its side on every side (the cytoplasm).
    merge : float
        Lobes within this fraction of the typical nucleus side join into one cell.
    max_aspect : float
        A component longer than this many times its width is not a nucleus.
    """

    candidates: str = "green_od"
    min_od: float = 0.7
    margin: float = 0.2
    merge: float = 0.2
    max_aspect: float = 3.0

    def __post_init__(self):
        if self.candidates not in CANDIDATE_MAPS:
            raise ValueError(f"candidates must be one of {list(CANDIDATE_MAPS)}, got "
                             f"{self.candidates!r}")


@dataclass(frozen=True)
class SizeBounds:
    """The pixel areas a nucleus of this lab may have, and its typical side in pixels."""

    min_area: float
    max_area: float
    typical_side: float


def lit_field(field: np.ndarray) -> np.ndarray:
    """Bool (H, W): the pixels inside the microscope's lit field."""
    brightness = field.max(axis=-1).astype(np.float32)
    lit = brightness >= UNLIT * np.percentile(brightness, 95)
    # The rim of a round field stop is dark and tinted, like stain: two pixels in from it.
    return ndimage.binary_erosion(lit, iterations=2, border_value=1)


def candidate_map(field: np.ndarray, settings: DetectionSettings) -> np.ndarray:
    """Bool (H, W): the pixels that look like nucleus stain, gaps of a pixel closed."""
    lit = lit_field(field)
    pixels = field.astype(np.float32)
    if settings.candidates == "green_od":
        green = pixels[..., 1] + 1.0
        typical = np.median(green[lit]) if lit.any() else 256.0
        brightest = pixels.max(axis=-1)
        saturation = (brightest - pixels.min(axis=-1)) / np.maximum(brightest, 1.0)
        stained = (np.log10(typical / green) > settings.min_od) & (saturation > MIN_SATURATION)
    else:
        haematoxylin = rgb2hed(field)[..., 0]
        values = haematoxylin[lit]
        stained = haematoxylin > (threshold_otsu(values) if values.size > 1 else np.inf)
    return ndimage.binary_closing(stained & lit, iterations=1)


def component_areas(mask: np.ndarray) -> np.ndarray:
    """The pixel area of each connected component of ``mask`` (8-connected)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    return np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)


def learn_size_bounds(areas: np.ndarray, min_pixels: int = 12) -> SizeBounds:
    """Nucleus size bounds from the candidate components of a lab's fields, no label read.

    The large components are nuclei: the 90th percentile of the areas (of components of at
    least ``min_pixels``) is the typical nucleus. A nucleus is at least a fifth of it (a small
    lymphocyte beside a monocyte) and at most five times it (touching cells).
    """
    areas = np.asarray(areas, np.float64)
    areas = areas[areas >= min_pixels]
    if not len(areas):
        return SizeBounds(float(min_pixels), float("inf"), float(np.sqrt(min_pixels)))
    typical = float(np.percentile(areas, 90))
    return SizeBounds(max(min_pixels, 0.2 * typical), 5.0 * typical, float(np.sqrt(typical)))


class Detection(NamedTuple):
    """What :func:`detect_cells` found in one field.

    Attributes
    ----------
    boxes : float ndarray of shape (n, 4)
        White-cell boxes ``(x0, y0, x1, y1)`` in the field's pixels.
    clumps : list of (int, tuple of 4 ints)
        Each clump left out: about how many nuclei touch in it, and its box.
    """

    boxes: np.ndarray
    clumps: list[tuple[int, tuple[int, int, int, int]]]


def detect_cells(field: np.ndarray, bounds: SizeBounds, settings: DetectionSettings
                 ) -> Detection:
    """White-cell boxes of one field, and the clumps too dense to cut into cells.

    Parameters
    ----------
    field : uint8 ndarray of shape (H, W, 3)
    bounds : SizeBounds
        From :func:`learn_size_bounds` over the lab's fields.
    settings : DetectionSettings
    """
    stain = candidate_map(field, settings)
    reach = max(1, int(round(settings.merge * bounds.typical_side)))
    grouped, n = ndimage.label(ndimage.binary_dilation(stain, iterations=reach),
                               structure=np.ones((3, 3), bool))
    grouped = np.where(stain, grouped, 0)
    parts, core = _nucleus_parts(stain, bounds)
    clumps = _clumps(grouped, parts, core, bounds)
    for index, _, _ in clumps:
        grouped[grouped == index] = 0
    cells = _split_touching(grouped, parts, core)
    areas = np.bincount(cells.ravel())
    height, width = stain.shape
    boxes = []
    for index, found in enumerate(ndimage.find_objects(cells), start=1):
        if found is None or not bounds.min_area <= areas[index] <= bounds.max_area:
            continue
        ys, xs = found
        h, w = ys.stop - ys.start, xs.stop - xs.start
        # A nucleus is compact: not a sliver, not a sparse spread of specks, not a field-wide
        # smear of stain.
        if (max(h, w) > settings.max_aspect * min(h, w) or areas[index] < MIN_FILL * h * w
                or max(h, w) > MAX_SIDE * bounds.typical_side):
            continue
        dx, dy = settings.margin * w, settings.margin * h
        boxes.append((max(0.0, xs.start - dx), max(0.0, ys.start - dy),
                      min(float(width), xs.stop + dx), min(float(height), ys.stop + dy)))
    return Detection(np.asarray(boxes, np.float64).reshape(-1, 4),
                     [(count, box) for _, count, box in clumps])


def _nucleus_parts(stain: np.ndarray, bounds: SizeBounds) -> tuple[np.ndarray, np.ndarray]:
    """The connected stained parts (labelled), and which of them are nucleus-sized (half a
    typical nucleus or more, indexed by label)."""
    parts, _ = ndimage.label(stain, structure=np.ones((3, 3), bool))
    core = np.bincount(parts.ravel()) >= 0.5 * bounds.typical_side ** 2
    core[0] = False
    return parts, core


def _clumps(groups: np.ndarray, parts: np.ndarray, core: np.ndarray, bounds: SizeBounds
            ) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """``(group label, nuclei, (x0, y0, x1, y1))`` of every group of ``groups`` holding more than
    :data:`MAX_CLUMP_NUCLEI` nuclei: its nucleus-sized parts (``parts``, ``core`` of
    :func:`_nucleus_parts`), or, where nuclei have run together into larger parts, its stained
    area in typical nuclei."""
    areas = np.bincount(groups.ravel())
    out = []
    for index, found in enumerate(ndimage.find_objects(groups), start=1):
        if found is None:
            continue
        own = np.unique(parts[found][groups[found] == index])
        count = max(int(core[own].sum()), int(round(areas[index] / bounds.typical_side ** 2)))
        if count > MAX_CLUMP_NUCLEI:
            ys, xs = found
            out.append((index, count, (xs.start, ys.start, xs.stop, ys.stop)))
    return out


def _split_touching(cells: np.ndarray, parts: np.ndarray, core: np.ndarray) -> np.ndarray:
    """``cells`` (labelled groups of stained pixels) with every group that holds two or more
    nucleus-sized components (``parts`` where ``core``, :func:`_nucleus_parts`) split between
    them: each of the group's stained pixels goes to the nearest of them. Touching white cells
    so become one box each, while a neutrophil's smaller lobes stay together."""
    out = cells.copy()
    next_label = int(cells.max()) + 1
    for index, found in enumerate(ndimage.find_objects(cells), start=1):
        if found is None:
            continue
        window = cells[found] == index
        own = np.unique(parts[found][window])
        cores = own[core[own]]
        if len(cores) < 2:
            continue
        seeds = np.isin(parts[found], cores) & window
        _, (iy, ix) = ndimage.distance_transform_edt(~seeds, return_indices=True)
        nearest = parts[found][iy, ix]
        for c in cores[1:]:
            out[found][window & (nearest == c)] = next_label
            next_label += 1
    return out
