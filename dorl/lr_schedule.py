"""The learning-rate schedule of both trainers (SAM fine-tuning and the autoencoder): a linear
warm-up, then a cosine decay to zero, stepped once per optimiser step."""

from __future__ import annotations

import math


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """Warm-up length in optimiser steps: ``warmup_epochs`` epochs, at least one step."""
    return max(1, round(float(warmup_epochs) * steps_per_epoch))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier at optimiser ``step`` (0-based).

    Rises linearly to 1 over the first ``warmup_steps`` steps (the first step already trains, at
    ``1 / warmup_steps``), then decays on a cosine to 0 at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
