"""Two-view agreement without labels: the InfoNCE (NT-Xent) loss of SimCLR.

Each cell's two views (:mod:`dorl.cae.views`) must find each other among all the views of the
batch. A batch holds every lab's cells (domain-balanced), so the other cells a view is told apart
from come from its own lab and from the others: what stays is what a cell is, not how its lab
imaged it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of paired projections.

    Parameters
    ----------
    z1, z2 : Tensor of shape (n, d)
        Row i of each is a view of cell i (n >= 2).
    temperature : float
        Softmax temperature of the cosine similarities.

    Returns
    -------
    Tensor of shape ()
        The mean over the 2n views of the cross-entropy of finding the other view of their cell
        among the 2n - 1 other views; ``log(2n - 1)`` at chance.
    """
    if z1.shape != z2.shape or len(z1) < 2:
        raise ValueError(f"info_nce needs two (n, d) views with n >= 2, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device),
                                float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partner)
