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


def cross_lab_neighbour_nce(z1: torch.Tensor, z2: torch.Tensor, domains: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """InfoNCE whose positive spans two labs (NNCLR's idea, with the batch as support set).

    Each cell's nearest cell of another lab in the batch (cosine of the first views, no
    gradient through the choice) stands in for the cell: its first view must find the cell's
    second view among the batch's second views, and the other way round. Two labs' cells of one
    type, imaged differently, are pulled together once the embedding ranks them near.

    Parameters
    ----------
    z1, z2 : Tensor of shape (n, d)
        Row i of each is a view of cell i.
    domains : int Tensor of shape (n,)
        Each cell's lab.
    temperature : float

    Returns
    -------
    Tensor of shape ()
        The mean over the cells that have another lab in the batch; 0 when none has.
    """
    if z1.shape != z2.shape or len(domains) != len(z1):
        raise ValueError(f"cross_lab_neighbour_nce needs two (n, d) views and n domains, got "
                         f"{tuple(z1.shape)}, {tuple(z2.shape)} and {tuple(domains.shape)}")
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    other_lab = domains[:, None] != domains[None, :]
    has_other = other_lab.any(dim=1)
    if not bool(has_other.any()):
        return z1.new_zeros(())
    with torch.no_grad():
        neighbour = (z1 @ z1.T).masked_fill(~other_lab, float("-inf")).argmax(dim=1)
    rows = torch.nonzero(has_other).flatten()
    target = rows.to(z1.device)
    forward = z1[neighbour[rows]] @ z2.T / temperature
    backward = z2[neighbour[rows]] @ z1.T / temperature
    return 0.5 * (F.cross_entropy(forward, target) + F.cross_entropy(backward, target))
