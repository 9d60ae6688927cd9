"""Cross-lab colour views: a cell rendered with another lab's stain statistics.

Two random views of one cell (:mod:`dorl.cae.views`) differ by small stain jitters around that
cell's own lab. A lab's colours differ from another's by far more, so the contrastive pair never
spans two labs. Here each lab's stain is summarised by the mean and spread of its cells'
optical density per RGB channel, and a cell of lab *a* is re-rendered in lab *b*'s statistics,

    od' = (od - mean_a) / std_a * std_b + mean_b,

so that one view of the pair looks as lab *b* would have stained it (the stain-swap idea of SADA,
arXiv 2412.02976, inside the contrastive objective). No label is read: the statistics come from
every lab's unlabelled cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dorl.row_sources import RowSource, take

#: The crops' fill outside the cell (:func:`dorl.features.encode.masked_crop`): not stain, so
#: left out of the statistics and left unchanged.
FILL = 128
#: Cells per lab the statistics are estimated on (spread evenly over the lab's cells).
STAT_CELLS = 256
_EPS = 1e-3


@dataclass(frozen=True)
class LabStain:
    """Each lab's optical-density statistics per RGB channel.

    Attributes
    ----------
    mean, std : float ndarray of shape (n_labs, 3)
        Indexed by domain id; a lab without cells has mean 0 and std 1 (and is never drawn).
    present : int ndarray
        The domain ids that have cells.
    """

    mean: np.ndarray
    std: np.ndarray
    present: np.ndarray


def _optical_density(x: torch.Tensor) -> torch.Tensor:
    return -torch.log((x.float() + 1.0) / 256.0)


def _stain_pixels(crops: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: the pixels that are not the crops' fill."""
    return (crops != FILL).any(dim=-1)


def lab_stain(crops: RowSource, domain_ids: np.ndarray, rows: np.ndarray,
              n_domains: int) -> LabStain:
    """The :class:`LabStain` of the cells ``rows`` of ``crops`` (n, s, s, 3) uint8, each lab
    from at most :data:`STAT_CELLS` of its cells."""
    mean = np.zeros((n_domains, 3))
    std = np.ones((n_domains, 3))
    present = np.unique(domain_ids[rows])
    for d in present:
        own = rows[domain_ids[rows] == d]
        picked = own[np.linspace(0, len(own) - 1, min(len(own), STAT_CELLS)).astype(int)]
        block = torch.from_numpy(np.asarray(take(crops, picked)))
        od = _optical_density(block)[_stain_pixels(block)]
        if len(od):
            mean[d] = od.mean(0).numpy()
            std[d] = od.std(0).clamp_min(_EPS).numpy()
    return LabStain(mean, std, present)


def other_labs(domains: np.ndarray, stain: LabStain, generator: torch.Generator) -> np.ndarray:
    """For each cell of ``domains`` (b,), a random lab of ``stain.present`` other than its own
    (its own where it is the only lab)."""
    choices = stain.present
    if len(choices) < 2:
        return domains.copy()
    draw = torch.randint(0, len(choices) - 1, (len(domains),), generator=generator).numpy()
    own = np.searchsorted(choices, domains)
    return choices[draw + (draw >= own)]


def swap_stain(crops: torch.Tensor, from_ids: np.ndarray, to_ids: np.ndarray,
               stain: LabStain) -> torch.Tensor:
    """``crops`` (B, H, W, 3) uint8 of labs ``from_ids`` (B,) rendered in the stain
    statistics of labs ``to_ids`` (B,): the same shape and dtype; the fill stays as it is."""
    mean, std = (torch.from_numpy(a).float() for a in (stain.mean, stain.std))
    src_mean, src_std = mean[from_ids][:, None, None], std[from_ids][:, None, None]
    dst_mean, dst_std = mean[to_ids][:, None, None], std[to_ids][:, None, None]
    od = (_optical_density(crops) - src_mean) / src_std * dst_std + dst_mean
    rendered = (torch.exp(-od.clamp_min(0.0)) * 256.0 - 1.0).round().clamp(0, 255)
    return torch.where(_stain_pixels(crops)[..., None], rendered.to(torch.uint8), crops)
