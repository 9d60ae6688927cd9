"""Simulated training labs: the labelled cells re-stained as if imaged in other labs, so that a
classifier sees several labs' versions of every training cell.

A classifier trained on one lab learns that lab's stain as part of each class. Per-domain
standardisation and AdaBN remove a domain's global offset, but not what a stain change does to
one class and not another. Training on the source's cells under several fixed stain changes,
each standardised and AdaBN-recalibrated as a domain of its own exactly as a new lab's cells
are, asks the classifier to ignore what differs between them.

Each lab is one fixed change of the cell's optical density (OD = -log(I / 256)) per channel,
``OD' = OD * scale + shift``: the light stain jitter of Tellez et al. (2019), applied in RGB optical
density, where a Giemsa/Wright stain's concentration acts. It changes colour the way a stain
does (darker cells shift more), not by hue rotation, saturation, brightness, blur or zoom, the
changes the bench's simulated *test* labs make (``bench/feature_options.py``), so that a score on
those labs measures generalisation to another kind of change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dorl.features.stain import optical_density

#: Per-channel OD scale and shift ranges of the drawn labs, fixed before any measurement.
OD_SCALE = (0.75, 1.25)
OD_SHIFT = (-0.05, 0.05)


@dataclass(frozen=True)
class TrainingLab:
    """One simulated lab: per-channel (R, G, B) optical-density scale and shift."""

    od_scale: tuple[float, float, float]
    od_shift: tuple[float, float, float]

    def apply(self, crops: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Re-stain the cell pixels of ``crops`` (n, s, s, 3) uint8 inside ``masks`` (n, s, s);
        returns a new uint8 array of the same shape (the background is left as it is)."""
        od = optical_density(crops, np.float32)  # float32: the re-staining holds n crops
        od = od * np.asarray(self.od_scale, np.float32) + np.asarray(self.od_shift, np.float32)
        restained = np.clip(256.0 * np.exp(-np.maximum(od, 0.0)) - 1.0, 0, 255)
        return np.where(masks[..., None], np.round(restained).astype(np.uint8), crops)


def draw_training_labs(n_labs: int, seed: int) -> list[TrainingLab]:
    """``n_labs`` labs drawn uniformly from :data:`OD_SCALE` x :data:`OD_SHIFT`, seeded."""
    rng = np.random.default_rng(seed)
    return [TrainingLab(tuple(float(v) for v in rng.uniform(*OD_SCALE, 3)),
                        tuple(float(v) for v in rng.uniform(*OD_SHIFT, 3)))
            for _ in range(n_labs)]


def lab_domains(domains: np.ndarray, lab: int) -> np.ndarray:
    """The domain names of lab ``lab``'s copies of cells from ``domains``: ``<domain>~lab<k>``,
    so that each copy is standardised and AdaBN-recalibrated apart from its original."""
    return np.char.add(np.asarray(domains, dtype=str), f"~lab{lab}")
