"""Two random views of each cell, as two labs might image it: the pairs the contrastive term
pulls together.

A view changes what differs between labs and keeps what a haematologist reads: the stain
(haematoxylin and eosin amounts in optical-density space), brightness, contrast and saturation,
focus, magnification, and the orientation (a cell has none). Pure torch, seeded by a
``torch.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dorl.sam.augment import augment_batch

#: Haematoxylin, eosin and residual optical-density directions (Ruifrok and Johnston's H&E
#: matrix, rows normalised): Giemsa, Wright and MGG smears fit the same two-stain model.
_HED_FROM_RGB_ROWS = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _HED_FROM_RGB_ROWS / _HED_FROM_RGB_ROWS.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


@dataclass(frozen=True)
class ViewAugment:
    """The random changes of a view (``cae.augment``).

    Attributes
    ----------
    stain_scale, stain_bias : float
        Each stain's optical density is multiplied by ``1 +- stain_scale`` and shifted by
        ``+- stain_bias``.
    brightness, contrast, saturation : float
        Largest relative change of each.
    blur_prob : float
        Share of views blurred (sigma 0.5-1.5 px).
    scale : (float, float)
        Zoom range about the centre.
    cross_lab_stain : float
        Share of cells whose second view is first rendered in another lab's stain statistics
        (:mod:`dorl.cae.lab_stain`), so that the pair spans two labs.
    """

    stain_scale: float = 0.15
    stain_bias: float = 0.05
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.3
    blur_prob: float = 0.3
    scale: tuple[float, float] = (0.8, 1.2)
    cross_lab_stain: float = 0.0


def _uniform(n: int, half_width: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * 2 - 1) * half_width


def jitter_stain(x: torch.Tensor, scale: float, bias: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Change each image's stain amounts: (B, 3, H, W) RGB in [0, 1] -> the same.

    The pixels go to optical density, then to haematoxylin/eosin/residual amounts; each image's
    amounts are scaled and shifted by one random draw per stain, and the result goes back.
    """
    b = x.shape[0]
    od = -torch.log(x.clamp_min(1.0 / 255.0))
    hed = torch.einsum("ij,bjhw->bihw", _HED_FROM_RGB.T.to(x), od)
    alpha = 1 + _uniform(3 * b, scale, generator).view(b, 3, 1, 1).to(x)
    beta = _uniform(3 * b, bias, generator).view(b, 3, 1, 1).to(x)
    od = torch.einsum("ij,bjhw->bihw", _RGB_FROM_HED.T.to(x), hed * alpha + beta)
    return torch.exp(-od).clamp(0, 1)


def random_view(crops: torch.Tensor, augment: ViewAugment,
                generator: torch.Generator) -> torch.Tensor:
    """One random view of each crop: (B, H, W, 3) uint8 -> (B, 3, H, W) float, 0..255.

    Stain, then brightness/saturation/blur/zoom/mirror (:func:`dorl.sam.augment.augment_batch`),
    then contrast about each view's mean and a random rotation by a multiple of 90 degrees.
    """
    b = crops.shape[0]
    x = crops.permute(0, 3, 1, 2).float() / 255.0
    x = jitter_stain(x, augment.stain_scale, augment.stain_bias, generator)
    stained = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    params = {"saturation": augment.saturation, "brightness": augment.brightness,
              "blur_prob": augment.blur_prob, "scale": augment.scale, "flip": True}
    view, _ = augment_batch(stained, torch.ones(stained.shape[:3], dtype=torch.bool), params,
                            generator)
    x = view.permute(0, 3, 1, 2).float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * (1 + _uniform(b, augment.contrast, generator)).view(b, 1, 1, 1)
         + mean).clamp(0, 255)
    turns = torch.randint(0, 4, (b,), generator=generator)
    return torch.stack([torch.rot90(img, int(k), dims=(-2, -1)) for img, k in zip(x, turns)])
