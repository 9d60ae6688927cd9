"""The autoencoder's loss terms on one batch of two views (:func:`compute_losses`):

    contrastive * InfoNCE(views) + reconstruction * (1 - SSIM + L1)(decoded views)
        + mmd * MMD^2(labs' embeddings) + supervised * CE(labelled source cells)
        + cross_lab_neighbour * InfoNCE(views, positives from another lab)
        + pseudo_labels.weight * CE(unlabelled cells, class-balanced pseudo-labels)

with the MMD averaged over every pair of labs in the batch (class-balanced, by labels and the
classifier head's predictions, when ``cae.class_balanced_mmd`` and a head exist).
"""

from __future__ import annotations

from functools import partial
from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim

from dorl.cae.alignment import class_balanced_mmd2, mmd2, pairwise_alignment
from dorl.cae.contrastive import cross_lab_neighbour_nce, info_nce
from dorl.cae.models import CAEOutput
from dorl.cae.settings import CAESettings


LOSS_TERMS = ("contrastive", "reconstruction", "mmd", "supervised", "cross_lab_neighbour",
              "pseudo_label")


def _mmd(pooled: torch.Tensor, logits: torch.Tensor | None, labels: torch.Tensor,
         domains: np.ndarray, settings: CAESettings) -> torch.Tensor:
    """The MMD term over every pair of domains in the batch (0 with one domain)."""
    present = np.unique(domains)
    if len(present) < 2:
        return pooled.new_zeros(())
    probs = None
    if settings.class_balanced_mmd and logits is not None:
        probs = torch.softmax(logits.detach().float(), dim=1)
        known = labels >= 0
        probs[known] = F.one_hot(labels[known], probs.shape[1]).to(probs)
    if probs is None:
        return pairwise_alignment(pooled, torch.from_numpy(domains),
                                  partial(mmd2, bandwidths=settings.mmd_bandwidths))
    terms = []
    for a, b in combinations(present.tolist(), 2):
        ra = torch.from_numpy(np.flatnonzero(domains == a))
        rb = torch.from_numpy(np.flatnonzero(domains == b))
        terms.append(class_balanced_mmd2(pooled[ra], pooled[rb], probs[ra], probs[rb],
                                         settings.mmd_bandwidths))
    return torch.stack(terms).mean()


def compute_losses(out: CAEOutput, pixels: torch.Tensor, labels: torch.Tensor,
                   domains: np.ndarray, settings: CAESettings,
                   neighbours: bool = True, pseudo: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
    """The weighted loss terms of one batch of both views and their sum under ``"total"``.

    Parameters
    ----------
    out : CAEOutput
        The model's output for ``pixels``: the first views of the b cells, then their second.
    pixels : Tensor of shape (2b, 3, s, s), 0..255
    labels : Tensor of shape (b,)
        Class index, -1 where the label is not to be learnt from.
    domains : int ndarray of shape (b,)
    neighbours : bool
        Whether the cross-lab neighbour term counts yet (``cae.neighbours_after_epochs``).
    pseudo : Tensor of shape (b,), optional
        Pseudo-label of each cell, -1 where it has none (the ``pseudo_label`` term).
    """
    w = settings.loss
    b = len(labels)
    zero = out.pooled.new_zeros(())
    terms = {name: zero for name in LOSS_TERMS}
    if w.contrastive > 0:
        terms["contrastive"] = w.contrastive * info_nce(out.projected[:b], out.projected[b:],
                                                        settings.temperature)
    if w.reconstruction > 0:
        target = pixels / 255.0
        image = out.image.float()
        terms["reconstruction"] = w.reconstruction * (
            1.0 - ssim(image, target, data_range=1.0, size_average=True)
            + F.l1_loss(image, target))
    if w.mmd > 0:
        terms["mmd"] = w.mmd * _mmd(out.pooled[:b], None if out.logits is None
                                    else out.logits[:b], labels, domains, settings)
    if w.cross_lab_neighbour > 0 and neighbours:
        terms["cross_lab_neighbour"] = w.cross_lab_neighbour * cross_lab_neighbour_nce(
            out.projected[:b], out.projected[b:], torch.from_numpy(domains).to(labels.device),
            settings.temperature)
    if w.supervised > 0 and bool((labels >= 0).any()):
        both = torch.cat([labels, labels])
        known = both >= 0
        terms["supervised"] = w.supervised * F.cross_entropy(out.logits[known].float(),
                                                             both[known])
    weight = settings.pseudo_labels.weight
    if weight > 0 and pseudo is not None and bool((pseudo >= 0).any()):
        both = torch.cat([pseudo, pseudo])
        taken = both >= 0
        terms["pseudo_label"] = weight * F.cross_entropy(out.logits[taken].float(), both[taken])
    terms["total"] = sum(terms[k] for k in LOSS_TERMS)
    return terms
