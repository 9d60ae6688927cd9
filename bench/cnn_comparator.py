"""The supervised end-to-end comparator of the real-data bench: a small CNN trained on the source
lab's labels, on the same masked cell crops the feature encoders read.

It is what a lab would otherwise do, so it is scored with the same metric code
(:func:`dorl.classify.run.score`) on the same target cells. Plain torch (no torchvision).
GroupNorm rather than BatchNorm, because BatchNorm's running statistics carry the source lab's
appearance into every other lab. Every training batch gets random stain, colour, blur, scale and
flip changes (:func:`dorl.sam.augment.augment_batch`), the augmentation a cross-lab CNN needs.

The in-domain score is the held-out fifth of the source (fold 0 of the 5-fold split the
classifiers use): one training per seed, not five.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch import nn
from tqdm import tqdm

from dorl.lr_schedule import warmup_cosine
from dorl.sam.augment import augment_batch

logger = logging.getLogger("bench_realdata")

#: The augmentation of every training batch (``augment_batch`` parameters).
AUGMENT = {"hue": 0.05, "saturation": 0.3, "brightness": 0.2, "blur_prob": 0.3,
           "scale": [0.8, 1.2], "flip": True}


@dataclass(frozen=True)
class CNNSettings:
    """Training of the comparator (fixed before it was run; not tuned on any target)."""

    crop_size: int = 64
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    width: int = 32


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(8, c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.GroupNorm(8, c_out), nn.ReLU(),
        nn.MaxPool2d(2))


class CellCNN(nn.Module):
    """Four conv blocks (GroupNorm), global average pooling, a linear classifier.

    Input (B, 3, S, S) float in about [-2, 2]; output (B, n_classes) logits.
    """

    def __init__(self, n_classes: int, width: int = 32):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.features = nn.Sequential(*[_block(c_in, c_out) for c_in, c_out in
                                        zip([3] + widths[:-1], widths)])
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(widths[-1], n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _as_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W), centred and scaled."""
    return (images.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25


def train_cnn(crops: np.ndarray, masks: np.ndarray, labels: np.ndarray, seed: int,
              settings: CNNSettings) -> tuple[CellCNN, np.ndarray]:
    """Train on crops (n, S, S, 3) uint8 with masks (n, S, S) and labels (n,).

    Returns the model (eval mode) and its class names (sorted labels).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    classes, y = np.unique(labels, return_inverse=True)
    model = CellCNN(len(classes), settings.width)
    steps_per_epoch = int(np.ceil(len(y) / settings.batch_size))
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    total = steps_per_epoch * settings.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: warmup_cosine(step, total, steps_per_epoch))
    weights = torch.tensor(len(y) / (len(classes) * np.bincount(y)), dtype=torch.float32)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    images, cell_masks = torch.from_numpy(crops), torch.from_numpy(masks)
    targets = torch.from_numpy(y)
    model.train()
    for _ in tqdm(range(settings.epochs), desc="CNN", unit="epoch"):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), settings.batch_size):
            idx = order[start:start + settings.batch_size]
            batch, _ = augment_batch(images[idx], cell_masks[idx], AUGMENT, generator)
            loss = loss_fn(model(_as_input(batch)), targets[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval(), classes


@torch.no_grad()
def predict_cnn(model: CellCNN, classes: np.ndarray, crops: np.ndarray,
                batch_size: int = 256) -> np.ndarray:
    """Predicted labels (n,) of crops (n, S, S, 3) uint8."""
    out = []
    for start in range(0, len(crops), batch_size):
        logits = model(_as_input(torch.from_numpy(crops[start:start + batch_size])))
        out.append(logits.argmax(dim=1).numpy())
    return classes[np.concatenate(out)]


def cnn_predictions(crops: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                    domains: np.ndarray, source: str, seed: int, settings: CNNSettings
                    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float, int]:
    """Train on the source's folds 1-4 (of the classifiers' 5-fold split) and predict.

    Returns ``{target: (rows, predictions)}`` (the source's key holds its held-out fold), the
    training seconds and the number of training cells.
    """
    src = np.flatnonzero(domains == source)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    train, held_out = next(folds.split(np.zeros(len(src)), labels[src]))
    train, held_out = src[train], src[held_out]
    start = time.perf_counter()
    model, classes = train_cnn(crops[train], masks[train], labels[train], seed, settings)
    seconds = time.perf_counter() - start
    logger.info("CNN (seed %d): trained on %d source cells in %.0f s", seed, len(train), seconds)
    out = {source: (held_out, predict_cnn(model, classes, crops[held_out]))}
    for target in sorted(set(domains) - {source}):
        rows = np.flatnonzero(domains == target)
        out[target] = (rows, predict_cnn(model, classes, crops[rows]))
    return out, seconds, len(train)
