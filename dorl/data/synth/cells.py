"""Drawing one synthetic white blood cell on a smear background, with its exact mask.

A cell is drawn as stain concentrations on a pixel grid (see :mod:`dorl.data.synth.domains` for the
Beer-Lambert colour model), then lit, blurred and given camera noise in its lab's style. The
white cell sits near the image centre, wholly inside the image, on top of red cells that may
cross the border. Its mask comes from the same geometry as its pixels, so they agree exactly.

Class looks (Romanowsky-stained peripheral blood):

* neutrophil: 3-5 nuclear lobes joined by thin strands; pale pink, finely granular cytoplasm.
* lymphocyte: small cell; large, round, dense nucleus; thin rim of blue cytoplasm.
* monocyte: large cell; kidney- or horseshoe-shaped, lacy nucleus; grey-blue cytoplasm,
  sometimes vacuoles.
* eosinophil: bilobed nucleus; cytoplasm packed with coarse orange-red granules.
* basophil: coarse dark purple granules over the whole cell, obscuring the nucleus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.ndimage import gaussian_filter

from dorl.data.synth.domains import DomainStyle

#: Image side at which the pixel sizes below are given; other sizes scale them.
REF_SIZE = 128
#: Pixels per micrometre at REF_SIZE and magnification 1.0 (a 12 um neutrophil spans ~45 %).
PX_PER_UM = 4.8
#: Red-cell radius in micrometres.
RED_CELL_RADIUS_UM = 3.8
#: Eosin concentration of the plasma film between cells.
PLASMA_EOSIN = 0.03
#: Mask values, as in the Zheng-2018 ground truth.
MASK_BACKGROUND, MASK_CYTOPLASM, MASK_NUCLEUS = 0, 128, 255


@dataclass(frozen=True)
class CellLook:
    """Size and stain uptake of one cell class (concentrations ordered as ``STAINS``).

    Attributes
    ----------
    radius_um : float
        Mean cell radius in micrometres.
    cytoplasm : tuple of 3 float
        Stain concentrations of the cytoplasm.
    nucleus : float
        Azure concentration of the nucleus (chromatin density).
    chromatin : float
        Relative amplitude of the nuclear texture.
    granules : tuple of 3 float
        Stain concentrations added at a granule's peak.
    granule_cover : float
        Fraction of the covered region that granules occupy.
    granule_px : float
        Granule size (Gaussian sigma) in pixels of a 128-px image at magnification 1.
    granules_over_nucleus : bool
        Whether granules also lie over the nucleus (basophils) or only in the cytoplasm.
    """

    radius_um: float
    cytoplasm: tuple[float, float, float]
    nucleus: float
    chromatin: float
    granules: tuple[float, float, float] = (0.0, 0.0, 0.0)
    granule_cover: float = 0.0
    granule_px: float = 0.6
    granules_over_nucleus: bool = False


LOOKS = {
    "neutrophil": CellLook(6.0, (0.08, 0.30, 0.0), 1.05, 0.20, (0.10, 0.20, 0.0), 0.35, 0.6),
    "lymphocyte": CellLook(4.4, (0.04, 0.02, 0.55), 1.30, 0.15),
    "monocyte": CellLook(8.0, (0.12, 0.06, 0.30), 0.80, 0.30, (0.08, 0.0, 0.0), 0.30, 0.6),
    "eosinophil": CellLook(6.4, (0.04, 0.20, 0.0), 1.00, 0.20, (0.0, 1.30, 0.0), 0.55, 1.0),
    "basophil": CellLook(5.6, (0.15, 0.10, 0.10), 0.75, 0.20, (1.50, 0.0, 0.20), 0.35, 1.1,
                         granules_over_nucleus=True),
}


def _disc(u: np.ndarray, v: np.ndarray, cu: float, cv: float, r: float) -> np.ndarray:
    """Pixels within ``r`` of (cu, cv)."""
    return (u - cu) ** 2 + (v - cv) ** 2 < r * r


def _strand(u: np.ndarray, v: np.ndarray, p: np.ndarray, q: np.ndarray,
            width: float) -> np.ndarray:
    """Pixels within ``width`` of the segment p-q (a capsule)."""
    d = q - p
    t = np.clip(((u - p[0]) * d[0] + (v - p[1]) * d[1]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    return (u - p[0] - t * d[0]) ** 2 + (v - p[1] - t * d[1]) ** 2 < width * width


def _lobes(u: np.ndarray, v: np.ndarray, centres: np.ndarray, radii: np.ndarray,
           width: float) -> np.ndarray:
    """Union of discs at ``centres`` (n, 2) joined in order by strands of ``width``."""
    out = np.zeros(u.shape, dtype=bool)
    for (cu, cv), r in zip(centres, radii):
        out |= _disc(u, v, cu, cv, r)
    for p, q in zip(centres[:-1], centres[1:]):
        out |= _strand(u, v, p, q, width)
    return out


def _neutrophil_nucleus(u, v, rng):
    """3-5 lobes along an arc, joined by thin strands."""
    n = int(rng.integers(3, 6))
    step = np.deg2rad(rng.uniform(48.0, 62.0))
    angles = (np.arange(n) - (n - 1) / 2) * step + rng.normal(0.0, 0.12, n)
    arc = rng.uniform(0.40, 0.50)
    centres = np.stack([arc * np.sin(angles), -arc * np.cos(angles)], axis=1)
    centres += rng.normal(0.0, 0.04, centres.shape) - centres.mean(axis=0)
    return _lobes(u, v, centres, rng.uniform(0.22, 0.28, n), rng.uniform(0.04, 0.07))


def _lymphocyte_nucleus(u, v, rng):
    """A large round nucleus, slightly off centre, leaving a thin rim."""
    return _disc(u, v, rng.uniform(0.04, 0.12), 0.0, rng.uniform(0.78, 0.86))


def _monocyte_nucleus(u, v, rng):
    """A disc with a bite taken out: kidney or horseshoe."""
    body = _disc(u, v, -0.12, 0.0, rng.uniform(0.60, 0.68))
    # A small, far bite gives a kidney; a large, close one a horseshoe.
    bite = _disc(u, v, rng.uniform(0.38, 0.52), rng.normal(0.0, 0.05), rng.uniform(0.28, 0.42))
    return body & ~bite


def _eosinophil_nucleus(u, v, rng):
    """Two lobes joined by a strand."""
    spread = rng.uniform(0.32, 0.40)
    centres = np.array([[-spread, -0.08], [spread, -0.08]]) + rng.normal(0.0, 0.04, (2, 2))
    return _lobes(u, v, centres, rng.uniform(0.28, 0.34, 2), rng.uniform(0.05, 0.08))


def _basophil_nucleus(u, v, rng):
    """2-3 overlapping lobes near the centre (later hidden under granules)."""
    n = int(rng.integers(2, 4))
    centres = rng.normal(0.0, 0.16, (n, 2))
    return _lobes(u, v, centres, rng.uniform(0.30, 0.40, n), 0.10)


#: Class -> f(u, v, rng) giving the nucleus (bool, shape of u) in cell coordinates (radii).
NUCLEUS_SHAPES: dict[str, Callable] = {
    "neutrophil": _neutrophil_nucleus, "lymphocyte": _lymphocyte_nucleus,
    "monocyte": _monocyte_nucleus, "eosinophil": _eosinophil_nucleus,
    "basophil": _basophil_nucleus,
}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise of unit standard deviation, float32 of ``shape``."""
    field = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def _granules(rng: np.random.Generator, shape: tuple[int, int], cover: float,
              sigma: float) -> np.ndarray:
    """Random granules of peak 1 covering about ``cover`` of the area, float32 of ``shape``."""
    area = 2.0 * np.pi * sigma * sigma
    points = (rng.random(shape, dtype=np.float32) < cover / area).astype(np.float32)
    return np.minimum(gaussian_filter(points, sigma) * area, 1.0)


def _add_red_cells(eosin: np.ndarray, style: DomainStyle, px_per_um: float,
                   rng: np.random.Generator) -> None:
    """Add red cells (discs with central pallor) to the eosin map (S, S), in place."""
    size = eosin.shape[0]
    for _ in range(int(rng.integers(style.red_cells[0], style.red_cells[1] + 1))):
        r = RED_CELL_RADIUS_UM * px_per_um * rng.uniform(0.88, 1.12)
        cx, cy = rng.uniform(-0.15 * size, 1.15 * size, 2)
        ang, squash = rng.uniform(0.0, np.pi), rng.uniform(0.88, 1.0)
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, size)
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, size)
        if x0 >= x1 or y0 >= y1:
            continue
        dv = (np.arange(y0, y1) - cy)[:, None]
        du = (np.arange(x0, x1) - cx)[None, :]
        d = np.hypot(du * np.cos(ang) + dv * np.sin(ang),
                     (dv * np.cos(ang) - du * np.sin(ang)) / squash) / r
        eosin[y0:y1, x0:x1] += np.where(d < 1.0, 0.42 * (1.0 - 0.55 * np.exp(-4.0 * d * d)), 0.0)


def _illumination(size: int, style: DomainStyle, rng: np.random.Generator) -> np.ndarray:
    """Light reaching each pixel, shape (S, S, 3): lamp colour, vignetting and gradient."""
    pos = np.arange(size, dtype=np.float32) - (size - 1) / 2.0
    y, x = pos[:, None], pos[None, :]
    light = 1.0 - style.vignetting * (x * x + y * y) / (2.0 * (size / 2.0) ** 2)
    direction = rng.uniform(0.0, 2.0 * np.pi)
    light = light * (1.0 + style.gradient * (x * np.cos(direction) + y * np.sin(direction)) / size)
    lamp = np.asarray(style.lamp, dtype=np.float32) * np.float32(rng.normal(1.0, 0.015))
    return light[:, :, None] * lamp


def _outline(look: CellLook, size: int, px_per_um: float, rng: np.random.Generator):
    """Place and shape the white cell near the centre, wholly inside the image.

    The outline is a circle with random low harmonics (ellipticity, bumps), randomly rotated.

    Returns
    -------
    box : tuple of 2 slices
        The rows and columns of the image that hold the cell.
    u, v : numpy.ndarray
        Cell coordinates of the box pixels, in cell radii, shape (h, w), float32.
    edge : numpy.ndarray
        The outline's radius at each pixel's angle, in cell radii, shape (h, w); the cell is
        where ``hypot(u, v) < edge``.
    """
    harmonics = np.arange(2, 5, dtype=np.float32)[:, None, None]
    amps = rng.uniform(0.0, 0.045, 3).astype(np.float32)
    phases = rng.uniform(0.0, 2.0 * np.pi, 3).astype(np.float32)
    offset = np.clip(rng.normal(0.0, 0.03 * size, 2), -0.06 * size, 0.06 * size)
    reach = 1.0 + float(amps.sum())
    radius = look.radius_um * px_per_um * rng.lognormal(0.0, 0.08)
    radius = min(radius, (size / 2.0 - 2.0 - np.abs(offset).max()) / reach)
    cx, cy = (size - 1) / 2.0 + offset
    theta = rng.uniform(0.0, 2.0 * np.pi)
    x0, x1 = max(int(cx - radius * reach) - 1, 0), min(int(cx + radius * reach) + 2, size)
    y0, y1 = max(int(cy - radius * reach) - 1, 0), min(int(cy + radius * reach) + 2, size)
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
    cos, sin = np.float32(np.cos(theta) / radius), np.float32(np.sin(theta) / radius)
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    phi = np.arctan2(v, u)
    edge = 1.0 + (amps[:, None, None] * np.cos(harmonics * phi + phases[:, None, None])).sum(0)
    return (slice(y0, y1), slice(x0, x1)), u, v, edge


def draw_cell(cls: str, style: DomainStyle, size: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one white cell of class ``cls`` in lab ``style``.

    Parameters
    ----------
    cls : str
        One of :data:`LOOKS` (the five mature classes).
    style : DomainStyle
        The lab whose stain, light, optics and camera to imitate.
    size : int
        Image side in pixels.
    rng : numpy.random.Generator
        The only source of randomness (same state, same image).

    Returns
    -------
    image : numpy.ndarray
        RGB uint8, shape (size, size, 3), before any JPEG compression.
    mask : numpy.ndarray
        uint8, shape (size, size): 0 background (red cells included), 128 cytoplasm,
        255 nucleus.
    """
    look = LOOKS[cls]
    px_per_um = PX_PER_UM * size / REF_SIZE * style.scale
    conc = np.zeros((3, size, size), dtype=np.float32)
    conc[1] = PLASMA_EOSIN
    _add_red_cells(conc[1], style, px_per_um, rng)

    box, u, v, edge = _outline(look, size, px_per_um, rng)
    rho = np.hypot(u, v)
    cell = rho < edge
    nucleus = NUCLEUS_SHAPES[cls](u, v, rng) & (rho < 0.92 * edge)
    cytoplasm = cell & ~nucleus
    paint = conc[:, box[0], box[1]]
    paint[:, cell] = np.asarray(look.cytoplasm, dtype=np.float32)[:, None]
    ref_px = px_per_um / PX_PER_UM
    chromatin = _smooth_noise(rng, u.shape, 1.2 * ref_px)
    density = np.clip(1.0 + look.chromatin * chromatin[nucleus], 0.3, None)
    paint[0][nucleus] = look.nucleus * density
    if look.granule_cover > 0:
        field = _granules(rng, u.shape, look.granule_cover, look.granule_px * ref_px)
        region = cell if look.granules_over_nucleus else cytoplasm
        paint[:, region] += np.asarray(look.granules, dtype=np.float32)[:, None] * field[region]
    if cls == "monocyte":
        for _ in range(int(rng.integers(0, 4))):
            a, r = rng.uniform(0.0, 2.0 * np.pi), rng.uniform(0.6, 0.8)
            vacuole = _disc(u, v, r * np.cos(a), r * np.sin(a), rng.uniform(0.05, 0.09))
            paint[:, vacuole & cytoplasm] *= 0.35

    od = style.optical_density * np.float32(rng.lognormal(0.0, 0.06))
    absorbance = np.tensordot(conc, od, axes=([0], [0]))
    image = _illumination(size, style, rng) * np.exp(-np.log(10.0, dtype=np.float32) * absorbance)
    blur = style.blur_px * size / REF_SIZE
    if blur > 0:
        image = gaussian_filter(image, sigma=(blur, blur, 0.0))
    if style.noise > 0:
        image += style.noise * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)

    mask = np.full((size, size), MASK_BACKGROUND, dtype=np.uint8)
    mask_box = mask[box[0], box[1]]
    mask_box[cytoplasm] = MASK_CYTOPLASM
    mask_box[nucleus] = MASK_NUCLEUS
    return image, mask
