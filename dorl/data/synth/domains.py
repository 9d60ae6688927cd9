"""Lab presets for the synthetic cells: how one lab's stain, lamp, optics and camera look.

Colour follows the Beer-Lambert law of bright-field microscopy. A slide holds three stains, each
given as the RGB colour that a unit concentration of it transmits on a white lamp:

* ``azure`` (the purple nuclear stain of Romanowsky stains: azure B / methylene violet),
* ``eosin`` (pink-orange: red cells, eosinophil granules, the pink of neutrophil cytoplasm),
* ``methylene`` (the blue of lymphocyte and monocyte cytoplasm).

A pixel with concentrations ``c`` (3,) shows ``lamp * 10 ** -(c @ OD)`` where ``OD`` (3, 3) holds
each stain's optical density per RGB channel. The cell classes fix the concentrations (so a cell
type looks the same *relative* to its lab); a lab fixes the stain colours and strength, the lamp,
vignetting and gradient, blur, magnification, camera noise and JPEG compression, as real labs do.

The presets echo the public datasets: ``lab_a`` a CellaVision May-Grünwald-Giemsa lab (peach
background, as Acevedo-20 and Zheng-2018), ``lab_b`` a Giemsa-Wright lab on a camera-equipped
microscope (white background, violet-blue stain, vignetting, as LISC), ``lab_c`` an over-stained
Wright lab with a warm lamp and strong JPEG, ``lab_d`` a dim, blurred, noisy phone-on-eyepiece lab.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dorl.errors import InputError

#: Stain order in concentration arrays and in :attr:`DomainStyle.optical_density`.
STAINS = ("azure", "eosin", "methylene")


class DomainError(InputError, ValueError):
    """A synthetic domain name is not a known preset."""


@dataclass(frozen=True)
class DomainStyle:
    """Everything that makes one lab's images look like that lab's.

    Attributes
    ----------
    name : str
        The domain name written to the manifest.
    lamp : tuple of 3 float
        RGB of the empty slide under this lab's lamp and white balance (0..255).
    azure, eosin, methylene : tuple of 3 float
        RGB transmitted by a unit concentration of each stain on a white lamp (0..255).
    stain_strength : float
        Multiplies every optical density (over- or under-staining, smear thickness).
    vignetting : float
        Relative light lost at the image corners (0 = flat field).
    gradient : float
        Relative light change across the image along a random direction (uneven lamp).
    blur_px : float
        Gaussian blur sigma in pixels of a 128-px image (focus and optics); scaled with size.
    scale : float
        Magnification relative to the reference (1.0: a neutrophil spans ~45 % of the crop).
    noise : float
        Standard deviation of the camera noise, in 8-bit grey levels.
    jpeg_quality : int or None
        Save as JPEG with this quality, or as PNG when None.
    red_cells : tuple of 2 int
        Range (low, high inclusive) of red cells drawn in the background.
    """

    name: str
    lamp: tuple[float, float, float]
    azure: tuple[float, float, float]
    eosin: tuple[float, float, float]
    methylene: tuple[float, float, float]
    stain_strength: float = 1.0
    vignetting: float = 0.0
    gradient: float = 0.0
    blur_px: float = 0.5
    scale: float = 1.0
    noise: float = 2.0
    jpeg_quality: int | None = None
    red_cells: tuple[int, int] = (3, 8)

    @property
    def optical_density(self) -> np.ndarray:
        """Optical density per stain and RGB channel, shape (3 stains, 3 channels), float32."""
        colours = np.array([self.azure, self.eosin, self.methylene], dtype=np.float64)
        od = -np.log10(np.clip(colours, 1.0, 255.0) / 255.0) * self.stain_strength
        return od.astype(np.float32)

    @property
    def suffix(self) -> str:
        """Image file suffix: ``.jpg`` for JPEG labs, ``.png`` otherwise."""
        return ".jpg" if self.jpeg_quality is not None else ".png"


PRESETS = {
    style.name: style for style in (
        DomainStyle("lab_a", lamp=(253, 231, 207), azure=(95, 45, 165), eosin=(238, 125, 128),
                    methylene=(95, 140, 205), stain_strength=1.0, vignetting=0.0,
                    gradient=0.0, blur_px=0.4, scale=1.0, noise=1.5, jpeg_quality=92),
        DomainStyle("lab_b", lamp=(250, 250, 253), azure=(125, 92, 185), eosin=(222, 160, 200),
                    methylene=(120, 150, 215), stain_strength=0.85, vignetting=0.30,
                    gradient=0.0, blur_px=1.0, scale=0.85, noise=3.0, jpeg_quality=None,
                    red_cells=(2, 6)),
        DomainStyle("lab_c", lamp=(242, 236, 200), azure=(112, 35, 112), eosin=(232, 112, 90),
                    methylene=(80, 122, 172), stain_strength=1.2, vignetting=0.10,
                    gradient=0.25, blur_px=0.7, scale=1.15, noise=4.0, jpeg_quality=55,
                    red_cells=(4, 10)),
        DomainStyle("lab_d", lamp=(200, 212, 238), azure=(75, 62, 150), eosin=(220, 140, 165),
                    methylene=(100, 132, 195), stain_strength=1.0, vignetting=0.45,
                    gradient=0.10, blur_px=1.6, scale=0.95, noise=6.0, jpeg_quality=40),
    )
}


def domain_style(name: str) -> DomainStyle:
    """Return the preset called ``name``.

    Raises
    ------
    DomainError
        If ``name`` is not one of :data:`PRESETS`, listing the known names.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise DomainError(f"unknown synthetic domain {name!r} in data.synth.domains; known "
                          f"presets: {', '.join(PRESETS)}") from None
