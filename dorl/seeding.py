"""One seed for every random number generator a run touches."""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return a numpy ``Generator`` for new code.

    scikit-learn and UMAP take ``random_state=seed`` from the config at construction.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch
    except ImportError:  # stage 2 can run without torch
        pass
    else:
        torch.manual_seed(seed)
    return np.random.default_rng(seed)
