"""Domain-alignment losses between the latent codes of different domains.

* :func:`mmd2` is a real multi-kernel maximum mean discrepancy: the squared distance between the
  kernel mean embeddings of two samples under a sum of Gaussian kernels. It matches every moment
  of the distributions, unlike the first-moment matching that the DoRL / BC-SAM code calls "MMD".
* :func:`class_balanced_mmd2` is the same per class, each cell weighted by its label or its
  predicted class probabilities, so that labs with other class mixes are not pulled together.
* :func:`pairwise_alignment` averages a loss over every unordered pair of domains present.
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable, Sequence

import torch

DEFAULT_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances, (n, d) x (m, d) -> (n, m), clamped at 0."""
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None, :] - 2.0 * a @ b.T).clamp_min(0)


def mmd2(x: torch.Tensor, y: torch.Tensor,
         bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS) -> torch.Tensor:
    """Squared multi-kernel Gaussian MMD between two samples (biased V-statistic, >= 0).

    The kernel is ``sum_s exp(-||a - b||^2 / (2 * s * m))`` where ``m`` is the mean squared
    distance over the pooled sample (detached), so the bandwidths are relative to the data's scale
    and shrinking the latent space cannot make the loss vanish.

    Parameters
    ----------
    x : Tensor of shape (n, d)
    y : Tensor of shape (m, d)
    bandwidths : sequence of float
        Multipliers of the pooled mean squared distance, one Gaussian kernel each.

    Returns
    -------
    Tensor of shape ()
        MMD^2 averaged over the kernels; 0 when the samples have the same distribution.
    """
    if len(x) == 0 or len(y) == 0:
        raise ValueError(f"mmd2 needs two non-empty samples, got {len(x)} and {len(y)} rows")
    kernel = _pooled_kernel(x, y, bandwidths)
    n = len(x)
    k_xx = kernel[:n, :n].mean()
    k_yy = kernel[n:, n:].mean()
    k_xy = kernel[:n, n:].mean()
    return (k_xx + k_yy - 2.0 * k_xy).clamp_min(0)


def _pooled_kernel(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float]) -> torch.Tensor:
    """The multi-kernel Gram matrix (n + m, n + m) of the pooled sample, bandwidths relative to
    its mean squared distance (detached)."""
    pooled = torch.cat([x, y])
    d_all = _sq_dists(pooled, pooled)
    scale = d_all.detach().sum() / max(len(pooled) * (len(pooled) - 1), 1)
    scale = scale.clamp_min(1e-8)
    return sum(torch.exp(-d_all / (2.0 * s * scale)) for s in bandwidths) / len(bandwidths)


def class_balanced_mmd2(x: torch.Tensor, y: torch.Tensor, px: torch.Tensor, py: torch.Tensor,
                        bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
                        min_mass: float = 1.0) -> torch.Tensor:
    """Mean over classes of the MMD^2 between the two samples' cells of that class.

    Labs' class mixes differ (a differential holds few basophils), and plain MMD then pulls
    unlike cells together. Here each class is compared with itself: every cell enters class
    ``c``'s kernel mean embedding with weight ``p[:, c]`` (a one-hot label, or a classifier's
    probabilities for unlabelled cells).

    Parameters
    ----------
    x : Tensor of shape (n, d)
    y : Tensor of shape (m, d)
    px : Tensor of shape (n, C)
    py : Tensor of shape (m, C)
        Class weights of each row (rows sum to 1), treated as constants.
    min_mass : float, default=1.0
        A class enters the mean only where each sample holds at least this much of its weight.

    Returns
    -------
    Tensor of shape ()
        0 when no class has enough weight in both samples.
    """
    kernel = _pooled_kernel(x, y, bandwidths)
    n = len(x)
    px, py = px.detach().to(kernel), py.detach().to(kernel)
    mass_x, mass_y = px.sum(0), py.sum(0)
    present = (mass_x >= min_mass) & (mass_y >= min_mass)
    if not bool(present.any()):
        return kernel.new_zeros(())
    wx = px[:, present] / mass_x[present]
    wy = py[:, present] / mass_y[present]
    k_xx = (wx * (kernel[:n, :n] @ wx)).sum(0)
    k_yy = (wy * (kernel[n:, n:] @ wy)).sum(0)
    k_xy = (wx * (kernel[:n, n:] @ wy)).sum(0)
    return (k_xx + k_yy - 2.0 * k_xy).clamp_min(0).mean()


def pairwise_alignment(z: torch.Tensor, domain_ids: torch.Tensor,
                       loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Mean of ``loss`` over every unordered pair of domains present in the batch.

    Parameters
    ----------
    z : Tensor of shape (n, d)
        Latent codes.
    domain_ids : Tensor of shape (n,), int
        Domain index of each row.
    loss : callable (Tensor (a, d), Tensor (b, d)) -> Tensor ()
        E.g. :func:`mmd2`.

    Returns
    -------
    Tensor of shape ()
        0 when fewer than two domains are present.
    """
    present = torch.unique(domain_ids)
    pairs = list(combinations(present.tolist(), 2))
    if not pairs:
        return z.new_zeros(())
    groups = {d: z[domain_ids == d] for d in present.tolist()}
    return torch.stack([loss(groups[a], groups[b]) for a, b in pairs]).mean()
