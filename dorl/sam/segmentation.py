"""The segmentation result handed from the LoRA-SAM stage to the autoencoder stage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dorl.atomic import atomic_path


@dataclass
class Segmentation:
    """Per-cell outputs of batched SAM segmentation, aligned with the manifest rows.

    Attributes
    ----------
    crops : uint8 ndarray of shape (n, crop, crop, 3)
        The cell cut out by its mask, on a neutral grey (128) background, cropped to the mask's
        bounding box with a margin and resized to ``crop`` px (the CAE's SSIM target).
    raw_crops : uint8 ndarray of shape (n, crop, crop, 3)
        The whole input image resized to ``crop`` px, unmasked (for the no-mask ablation).
    masks : bool ndarray of shape (n, m, m)
        The cell mask (largest component, holes filled) at SAM's input resolution.
    boxes : float32 ndarray of shape (n, 4)
        Mask bounding boxes (x0, y0, x1, y1) in the mask's pixel grid.
    fallback : bool ndarray of shape (n,)
        True where the mask was empty, tiny or touched most of the border, so a centre crop
        was used instead.
    features : dict of name -> float32 ndarray of shape (n, ...)
        Encoder features, e.g. ``"sam_pooled"`` (n, C) and optionally ``"sam_spatial"``
        (n, C, h, w).
    meta : dict
        Provenance: backbone, checkpoint hash, adapter hash, image size, prompt mode, signature.
    """

    crops: np.ndarray
    raw_crops: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    fallback: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.crops)

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` atomically (meta stored as JSON)."""
        arrays = {"crops": self.crops, "raw_crops": self.raw_crops, "masks": self.masks,
                  "boxes": self.boxes, "fallback": self.fallback,
                  "meta_json": np.array(json.dumps(self.meta, default=str))}
        arrays.update({f"feat__{k}": v for k, v in self.features.items()})
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Segmentation":
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            feats = {k[len("feat__"):]: z[k] for k in z.files if k.startswith("feat__")}
            return cls(z["crops"], z["raw_crops"], z["masks"], z["boxes"], z["fallback"], feats,
                       json.loads(str(z["meta_json"])))
