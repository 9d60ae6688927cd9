"""The real-data bench's supervised CNN comparator: plain torch, GroupNorm, learns a toy task."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


from cnn_comparator import CellCNN, CNNSettings, predict_cnn, train_cnn


def test_cnn_has_no_batchnorm_and_maps_crops_to_logits():
    model = CellCNN(5, width=8)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_cnn_learns_bright_from_dark_cells():
    rng = np.random.default_rng(0)
    labels = np.repeat(["dark", "light"], 24)
    crops = np.where(labels[:, None, None, None] == "dark", 60, 200).astype(np.uint8)
    crops = np.broadcast_to(crops, (48, 32, 32, 3)).copy()
    crops = np.clip(crops + rng.integers(-20, 20, crops.shape), 0, 255).astype(np.uint8)
    masks = np.ones((48, 32, 32), bool)
    model, classes = train_cnn(crops, masks, labels, 0, CNNSettings(crop_size=32, epochs=8,
                                                                      batch_size=16, width=8))
    assert (predict_cnn(model, classes, crops) == labels).mean() > 0.9
