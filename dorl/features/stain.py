"""Colour and stain normalisation of masked cell crops, computed from the pixels inside the mask.

* ``reinhard``: the crop's LAB mean and standard deviation inside the mask are mapped to a
  reference's (Reinhard et al. 2001), per cell.
* ``macenko``: optical-density two-stain normalisation (Macenko et al. 2009): each domain's two
  stain vectors and 99th-percentile concentrations are estimated from its cells' masked pixels,
  and every cell is re-synthesised with the reference's vectors and concentrations. Giemsa, Wright
  and May-Grünwald-Giemsa smears fit this two-stain model.
* ``grey``: luminance only, repeated over the three channels.
* ``none``: the crop as it is.

Pixels outside the mask are left at their value (the crops' grey background).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from skimage.color import lab2rgb, rgb2lab

METHODS = ("none", "reinhard", "macenko", "grey")
#: Optical density below which a pixel counts as background in the stain estimate.
OD_BACKGROUND = 0.15
#: Pixels sampled per domain for the stain-vector estimate.
STAIN_SAMPLE = 200_000


def _od(rgb: np.ndarray) -> np.ndarray:
    """Optical density of uint8 RGB values, any leading shape + (3,)."""
    return -np.log((rgb.astype(np.float64) + 1.0) / 256.0)


def _masked_stats(lab: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean and standard deviation (2, 3) of a LAB image's pixels inside ``mask`` (all of them
    when the mask is empty)."""
    pixels = lab[mask] if mask.any() else lab.reshape(-1, 3)
    return np.stack([pixels.mean(axis=0), pixels.std(axis=0) + 1e-6])


def lab_stats(crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean and standard deviation of L, a, b inside ``mask``: shape (2, 3)."""
    return _masked_stats(rgb2lab(crop), mask)


def reinhard(crop: np.ndarray, mask: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map the crop's masked LAB statistics to ``reference`` (2, 3); returns uint8 (H, W, 3)."""
    lab = rgb2lab(crop)  # converted once: the statistics and the mapping both use it
    stats = _masked_stats(lab, mask)
    mapped = (lab - stats[0]) / stats[1] * reference[1] + reference[0]
    with warnings.catch_warnings():  # colours mapped out of the sRGB gamut are clipped
        warnings.filterwarnings("ignore", "Conversion from CIE-LAB", UserWarning)
        rgb = lab2rgb(mapped)
    out = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    return np.where(mask[..., None], out, crop)


def grey(crop: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R 601) of a uint8 RGB crop, repeated over three channels."""
    y = crop.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(y.round().astype(np.uint8)[..., None], 3, axis=-1)


@dataclass(frozen=True)
class StainBasis:
    """Two unit stain vectors in OD space (rows of ``vectors``, 2 x 3) and the 99th-percentile
    concentration of each."""

    vectors: np.ndarray
    max_conc: np.ndarray


def estimate_stains(od: np.ndarray, alpha: float = 1.0) -> StainBasis:
    """Macenko's estimate from foreground OD pixels (n, 3): the plane of the two largest
    principal directions, the extreme angles within it (``alpha`` percentiles)."""
    _, eigvecs = np.linalg.eigh(np.cov(od.T))
    plane = eigvecs[:, [2, 1]]  # the two largest of the ascending eigenvalues, (3, 2)
    plane *= np.sign(plane.sum(axis=0, keepdims=True) + 1e-12)
    proj = od @ plane
    angle = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(angle, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    vectors = np.stack([v1, v2]) if v1[0] > v2[0] else np.stack([v2, v1])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    conc = np.linalg.lstsq(vectors.T, od.T, rcond=None)[0]
    return StainBasis(vectors, np.percentile(conc, 99, axis=1) + 1e-6)


def masked_od(crops: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A sample (<= STAIN_SAMPLE) of the foreground OD pixels inside the masks of ``crops``."""
    od = _od(crops[masks])
    od = od[(od > OD_BACKGROUND).any(axis=1)]
    if len(od) > STAIN_SAMPLE:
        od = od[rng.choice(len(od), STAIN_SAMPLE, replace=False)]
    return od


def macenko(crop: np.ndarray, mask: np.ndarray, own: StainBasis,
            reference: StainBasis) -> np.ndarray:
    """Re-synthesise the masked pixels of ``crop`` with ``reference``'s stains; uint8 out."""
    od = _od(crop).reshape(-1, 3)
    conc = np.linalg.lstsq(own.vectors.T, od.T, rcond=None)[0]
    conc *= (reference.max_conc / own.max_conc)[:, None]
    rgb = 256.0 * np.exp(-(reference.vectors.T @ conc)).T - 1.0
    out = np.clip(rgb, 0, 255).round().astype(np.uint8).reshape(crop.shape)
    return np.where(mask[..., None], out, crop)


def normalise_crops(crops: np.ndarray, masks: np.ndarray, domains: np.ndarray, method: str,
                    reference_domains: list[str], seed: int) -> tuple[np.ndarray, dict]:
    """Normalise every crop with ``method``; the reference comes from ``reference_domains``.

    Parameters
    ----------
    crops : uint8 ndarray of shape (n, H, W, 3)
    masks : bool ndarray of shape (n, H, W)
    domains : ndarray of shape (n,)
    method : one of :data:`METHODS`
    reference_domains : list of str
        Domains whose cells define the target colours; empty means every domain, each weighing
        the same. No label is used.
    seed : int
        Seeds the pixel sample of the stain estimate.

    Returns
    -------
    normalised : uint8 ndarray of shape (n, H, W, 3)
    reference : dict
        The reference statistics, for provenance.
    """
    if method not in METHODS:
        raise ValueError(f"unknown stain normalisation {method!r}; known: {list(METHODS)}")
    if method == "none":
        return crops, {}
    if method == "grey":
        return np.stack([grey(c) for c in crops]), {}
    names = np.unique(domains)
    ref_names = [d for d in names if not reference_domains or d in reference_domains]
    if not ref_names:
        raise ValueError(f"features.stain_reference_domains {reference_domains} names none of "
                         f"the domains {list(names)}")
    out = np.empty_like(crops)
    if method == "reinhard":
        stats = np.stack([lab_stats(c, m) for c, m in zip(crops, masks)])
        reference = np.mean([stats[domains == d].mean(axis=0) for d in ref_names], axis=0)
        for i in range(len(crops)):
            out[i] = reinhard(crops[i], masks[i], reference)
        return out, {"lab_mean": reference[0].tolist(), "lab_std": reference[1].tolist()}
    rng = np.random.default_rng(seed)
    bases = {d: estimate_stains(masked_od(crops[domains == d], masks[domains == d], rng))
             for d in names}
    reference = StainBasis(np.mean([bases[d].vectors for d in ref_names], axis=0),
                           np.mean([bases[d].max_conc for d in ref_names], axis=0))
    for i in range(len(crops)):
        out[i] = macenko(crops[i], masks[i], bases[domains[i]], reference)
    return out, {"stain_vectors": reference.vectors.tolist(),
                 "max_concentrations": reference.max_conc.tolist()}
