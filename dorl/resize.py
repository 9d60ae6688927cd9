"""The package's resizes: antialiased bilinear for images, nearest neighbour for masks; the
aspect ratio is not kept."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_batch(images: np.ndarray, size: int, chunk: int = 512) -> np.ndarray:
    """Resize same-sized RGB images with antialiased bilinear filtering.

    Parameters
    ----------
    images : uint8 ndarray of shape (n, H, W, 3)
    size : int
        Output side S.
    chunk : int
        Images resized per torch call (bounds the float32 copy's memory).

    Returns
    -------
    uint8 ndarray of shape (n, S, S, 3)
    """
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(np.array(images[start:start + chunk], dtype=np.uint8))  # a copy
        y = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True)
        out[start:start + chunk] = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize one uint8 RGB image (H, W, 3) to (size, size, 3); see :func:`resize_batch`."""
    return resize_batch(np.asarray(image, dtype=np.uint8)[None], size)[0]


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a bool (H, W) mask to (size, size)."""
    t = torch.from_numpy(np.asarray(mask, dtype=bool))[None, None].float()
    return F.interpolate(t, size=(size, size), mode="nearest")[0, 0].numpy() > 0.5
