"""Per-domain BatchNorm statistics (AdaBN, Li et al. 2016): re-estimate every BatchNorm's running
mean and variance on one domain's cells before encoding that domain. Label-free.

BatchNorm statistics learnt on one lab are the largest single cross-lab effect reported for
white-cell classifiers; the learnt affine weights are kept, only the statistics change.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` (an empty list after folding them into convolutions)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace the running statistics of ``model``'s BatchNorm layers by those of ``batches``
    (the average of the per-batch means and variances, every batch weighing the same), then
    return the model to eval mode.

    Parameters
    ----------
    model : nn.Module
        Called as ``model(batch)``. Its BatchNorm layers must not be folded yet.
    batches : iterable of tensors
        One domain's inputs.

    Returns
    -------
    int
        The number of BatchNorm layers recalibrated.

    Raises
    ------
    ValueError
        When the model has no BatchNorm layer left (folded, or none to begin with).
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError("the model has no BatchNorm layer (folded into its convolutions?): "
                         "recalibrate before folding")
    model.eval()
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the mean of the per-batch statistics
        m.train()
    seen = 0
    for batch in batches:
        model(batch)
        seen += len(batch)
    for m, momentum in zip(layers, saved):
        m.momentum = momentum
        m.eval()
    if seen == 0:
        raise ValueError("no cells to recalibrate BatchNorm statistics on")
    return len(layers)
