"""The simulated labs of the selection rule: source cells re-imaged as another lab would image
them (colour, blur, zoom, half the resolution), and held-out source cells in a lab's class mix.

They stand in for the labs dorl will meet: the rule (`bench/selection_rule.py`) scores every
candidate default on them with source labels only. Each lab was added by a rule written before
it was scored (docs/benchmarks.md, Runs C-L).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dorl.features.resolution import resample_through
from dorl.sam.augment import simulate_lab

#: Simulated labs for the shifted-source score: hue (turns), saturation, brightness, blur
#: sigma (px at the crop side), zoom.
SIMULATED_LABS = {
    "sim_warm": dict(hue=0.05, saturation=0.8, brightness=1.1, blur_sigma=0.0, scale=1.0),
    "sim_cold_blur": dict(hue=-0.05, saturation=1.25, brightness=0.9, blur_sigma=1.0, scale=1.2),
    "sim_pale_small": dict(hue=0.0, saturation=0.7, brightness=1.0, blur_sigma=0.7, scale=0.85),
}
#: The fourth simulated lab (added by the rule of Run I, docs/history/runs-a-to-m.md):
#: the source imaged with this fraction of its pixels across each cell (e.g. a 50x objective
#: where the source used 100x), its colours unchanged.
LOW_RES_LAB = "sim_low_res"
LOW_RES_FACTOR = 0.5
#: The fifth simulated lab (added by the rule of Run J, docs/history/runs-a-to-m.md):
#: source cells that no fold trains on, in the class mix of a normal adult blood differential
#: (percent, within the textbook ranges: neutrophils 40-70, lymphocytes 20-40, monocytes 2-8,
#: eosinophils 1-4, basophils 0.5-1), encoded as a lab of their own with nothing else changed.
#: Every lab before it was class-balanced like the source; a lab's smears are not.
DIFFERENTIAL_LAB = "sim_differential"
DIFFERENTIAL = {"neutrophil": 60.0, "lymphocyte": 30.0, "monocyte": 7.0, "eosinophil": 3.0,
                "basophil": 1.0}
#: The sixth simulated lab (added by the rule of Run L, docs/history/runs-a-to-m.md):
#: the same held-out source cells in a young child's differential, where lymphocytes
#: outnumber neutrophils (textbook ranges at 1-4 years: lymphocytes 50-70, neutrophils
#: 25-45), re-imaged through :data:`PAEDIATRIC_SHIFT`'s colour, blur and zoom: a paediatric
#: lab differs in both.
PAEDIATRIC_LAB = "sim_paediatric"
PAEDIATRIC = {"lymphocyte": 60.0, "neutrophil": 30.0, "monocyte": 6.0, "eosinophil": 3.0,
              "basophil": 1.0}
PAEDIATRIC_SHIFT = "sim_cold_blur"
#: The held-out labs: each one's class mix, and the simulated lab that re-images it (or None).
HELD_OUT_LABS = {DIFFERENTIAL_LAB: (DIFFERENTIAL, None),
                 PAEDIATRIC_LAB: (PAEDIATRIC, PAEDIATRIC_SHIFT)}


#: The per-lab columns of :func:`shifted_source_scores` the rules' tables report.
LAB_COLUMNS = ("shifted_f1_colour_blur_zoom", "low_res_f1", "differential_f1", "paediatric_f1")
#: Each held-out lab's column.
HELD_OUT_COLUMNS = {DIFFERENTIAL_LAB: "differential_f1", PAEDIATRIC_LAB: "paediatric_f1"}


def reimaged(crops: np.ndarray, masks: np.ndarray, lab: str) -> tuple[np.ndarray, np.ndarray]:
    """``crops`` (n, s, s, 3) and ``masks`` (n, s, s) re-imaged by the simulated ``lab``."""
    parts = [simulate_lab(torch.from_numpy(crops[i:i + 64]), torch.from_numpy(masks[i:i + 64]),
                          **SIMULATED_LABS[lab]) for i in range(0, len(crops), 64)]
    return torch.cat([p[0] for p in parts]).numpy(), torch.cat([p[1] for p in parts]).numpy()


def shifted_crops(crops: np.ndarray, masks: np.ndarray, sides: np.ndarray
                  ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The crops re-imaged by every simulated lab: name -> (crops, masks, native crop sides).
    ``sides`` are the crops' native sides in pixels (:func:`native_crop_sides`)."""
    out = {name: (*reimaged(crops, masks, name), sides) for name in SIMULATED_LABS}
    low = sides * LOW_RES_FACTOR
    out[LOW_RES_LAB] = (resample_through(crops, low), masks, low)
    return out


def class_mix_rows(rows: np.ndarray, labels: np.ndarray, mix: dict[str, float],
                   min_count: int = 5, rng: np.random.Generator | None = None) -> np.ndarray:
    """The rows of a lab with ``mix``'s class mix (percent per class): the most common class
    keeps all its cells among ``rows`` and every other class its share of that, at least
    ``min_count`` cells (the classify stage scores no class with fewer) or all it has; classes
    outside ``mix`` are left out. ``labels`` are the labels of ``rows``. A class's cells are its
    first ones, or a draw with ``rng``."""
    top = max(mix, key=mix.get)
    n_top = int((labels == top).sum())
    picked = []
    for label, share in mix.items():
        own = rows[labels == label]
        count = min(len(own), max(min_count, int(round(n_top * share / mix[top]))))
        picked.append(own[:count] if rng is None else rng.choice(own, count, replace=False))
    return np.concatenate(picked)


@dataclass(frozen=True)
class HeldOutLab:
    """The source cells of one of the rule's :data:`HELD_OUT_LABS` (none of them a training
    cell of any fold), as the lab images them: crops (n, s, s, 3), masks (n, s, s), native
    sides (n,) and labels (n,)."""

    crops: np.ndarray
    masks: np.ndarray
    sides: np.ndarray
    labels: np.ndarray


def held_out_labs(crops: np.ndarray, masks: np.ndarray, sides: np.ndarray, labels: np.ndarray,
                  min_count: int) -> dict[str, HeldOutLab]:
    """Every lab of :data:`HELD_OUT_LABS` drawn from the held-out source cells ``crops``
    (n, s, s, 3), ``masks`` (n, s, s), ``sides`` (n,) and ``labels`` (n,)."""
    out = {}
    for name, (mix, shift) in HELD_OUT_LABS.items():
        rows = class_mix_rows(np.arange(len(labels)), labels, mix, min_count)
        lab_crops, lab_masks = crops[rows], masks[rows]
        if shift is not None:
            lab_crops, lab_masks = reimaged(lab_crops, lab_masks, shift)
        out[name] = HeldOutLab(lab_crops, lab_masks, sides[rows], labels[rows])
    return out
