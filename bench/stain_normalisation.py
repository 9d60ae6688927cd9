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

None of them won a place in dorl (docs/removed.md); the feature bench (``feature_options.py``)
still compares them, so they live here.
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


def optical_density(rgb: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Optical density -log((I + 1) / 256) of uint8 RGB values, any leading shape + (3,), in
    ``dtype``."""
    return -np.log((rgb.astype(dtype) + dtype(1.0)) / dtype(256.0))


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
    od = optical_density(crops[masks])
    od = od[(od > OD_BACKGROUND).any(axis=1)]
    if len(od) > STAIN_SAMPLE:
        od = od[rng.choice(len(od), STAIN_SAMPLE, replace=False)]
    return od


def macenko(crop: np.ndarray, mask: np.ndarray, own: StainBasis,
            reference: StainBasis) -> np.ndarray:
    """Re-synthesise the masked pixels of ``crop`` with ``reference``'s stains; uint8 out."""
    od = optical_density(crop).reshape(-1, 3)
    conc = np.linalg.lstsq(own.vectors.T, od.T, rcond=None)[0]
    conc *= (reference.max_conc / own.max_conc)[:, None]
    rgb = 256.0 * np.exp(-(reference.vectors.T @ conc)).T - 1.0
    out = np.clip(rgb, 0, 255).round().astype(np.uint8).reshape(crop.shape)
    return np.where(mask[..., None], out, crop)


@dataclass(frozen=True)
class StainReference:
    """What :func:`apply_stain` needs besides the crops: the method, the reference colours and,
    for ``macenko``, each domain's own stain basis."""

    method: str
    lab: np.ndarray | None = None
    basis: StainBasis | None = None
    domain_bases: dict | None = None

    def provenance(self) -> dict:
        """The reference statistics, for the feature file."""
        if self.method == "reinhard":
            return {"lab_mean": self.lab[0].tolist(), "lab_std": self.lab[1].tolist()}
        if self.method == "macenko":
            return {"stain_vectors": self.basis.vectors.tolist(),
                    "max_concentrations": self.basis.max_conc.tolist()}
        return {}


def stain_reference(crops: np.ndarray, masks: np.ndarray, domains: np.ndarray, method: str,
                    reference_domains: list[str], seed: int) -> StainReference:
    """Estimate the reference colours of ``method`` (and each domain's stains) from a sample of
    crops (n, H, W, 3) with their masks (n, H, W) and domains (n,).

    ``reference_domains``: the domains whose cells define the target colours; empty means every
    domain, each weighing the same. No label is used. ``seed`` seeds the pixel sample of the
    stain estimate.
    """
    if method not in METHODS:
        raise ValueError(f"unknown stain normalisation {method!r}; known: {list(METHODS)}")
    if method in ("none", "grey"):
        return StainReference(method)
    names = np.unique(domains)
    ref_names = [d for d in names if not reference_domains or d in reference_domains]
    if not ref_names:
        raise ValueError(f"reference domains {reference_domains} name none of "
                         f"the domains {list(names)}")
    if method == "reinhard":
        stats = np.stack([lab_stats(c, m) for c, m in zip(crops, masks)])
        return StainReference(method, lab=np.mean([stats[domains == d].mean(axis=0)
                                                   for d in ref_names], axis=0))
    rng = np.random.default_rng(seed)
    bases = {d: estimate_stains(masked_od(crops[domains == d], masks[domains == d], rng))
             for d in names}
    basis = StainBasis(np.mean([bases[d].vectors for d in ref_names], axis=0),
                       np.mean([bases[d].max_conc for d in ref_names], axis=0))
    return StainReference(method, basis=basis, domain_bases=bases)


def apply_stain(crops: np.ndarray, masks: np.ndarray, domains: np.ndarray,
                reference: StainReference) -> np.ndarray:
    """Normalise each crop (n, H, W, 3) to ``reference``, cell by cell; same shape and dtype."""
    if reference.method == "none":
        return crops
    if reference.method == "grey":
        return np.stack([grey(c) for c in crops]) if len(crops) else crops.copy()
    out = np.empty_like(crops)
    for i in range(len(crops)):
        if reference.method == "reinhard":
            out[i] = reinhard(crops[i], masks[i], reference.lab)
        else:
            own = reference.domain_bases.get(domains[i])
            if own is None:
                raise ValueError(f"domain {domains[i]!r} has no stain estimate")
            out[i] = macenko(crops[i], masks[i], own, reference.basis)
    return out


def normalise_crops(crops: np.ndarray, masks: np.ndarray, domains: np.ndarray, method: str,
                    reference_domains: list[str], seed: int) -> tuple[np.ndarray, dict]:
    """Normalise every crop with ``method``, the reference estimated from these crops
    (:func:`stain_reference`, then :func:`apply_stain`).

    Returns
    -------
    normalised : uint8 ndarray of shape (n, H, W, 3)
    reference : dict
        The reference statistics, for provenance.
    """
    reference = stain_reference(crops, masks, domains, method, reference_domains, seed)
    return apply_stain(crops, masks, domains, reference), reference.provenance()
