"""Colour, stain, blur, scale and flip augmentation of image/mask batches for SAM fine-tuning.

Pure torch (no torchvision or kornia). Labs differ by stain hue and intensity, focus and
magnification; these are the variations the augmentation draws.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of (B, 3, H, W) RGB images by ``angle`` (B,) radians about the grey axis."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    k = 1.0 / 3.0
    s3 = math.sqrt(k)
    # Rodrigues rotation about the unit vector (1, 1, 1) / sqrt(3)
    eye = torch.eye(3, device=x.device, dtype=x.dtype)
    cross = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], device=x.device, dtype=x.dtype) * s3
    outer = torch.full((3, 3), k, device=x.device, dtype=x.dtype)
    rot = (cos[:, None, None] * eye + sin[:, None, None] * cross
           + (1 - cos)[:, None, None] * outer)
    return torch.einsum("bij,bjhw->bihw", rot, x)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, C, H, W) with one ``sigma`` (pixels), reflect padding."""
    radius = max(1, int(math.ceil(2 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _zoom(images: torch.Tensor, masks: torch.Tensor, scale: torch.Tensor,
          flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom about the centre by ``scale`` (B,) and mirror where ``flip`` (B,) is True.

    Pixels that come from outside the image take the border value (images) or 0 (masks).
    """
    b = images.shape[0]
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0) / scale
    theta[:, 1, 1] = 1.0 / scale
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                           align_corners=False)
    masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return images, masks


def augment_batch(images: torch.Tensor, masks: torch.Tensor, params,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply random colour, blur, scale and flip changes to a batch.

    Parameters
    ----------
    images : uint8 tensor of shape (B, H, W, 3)
    masks : bool tensor of shape (B, H, W)
    params : mapping
        ``hue`` (max rotation, in turns), ``saturation`` and ``brightness`` (max relative
        change), ``blur_prob``, ``scale`` ([min, max] zoom) and ``flip`` (bool): the
        ``sam.finetune.augment`` config section.
    generator : torch.Generator
        The seeded source of every random draw.

    Returns
    -------
    images : uint8 tensor of shape (B, H, W, 3)
    masks : bool tensor of shape (B, H, W)
    """
    b = images.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator)

    x = images.permute(0, 3, 1, 2).float() / 255.0
    m = masks[:, None].float()
    hue = float(params.get("hue", 0.0))
    if hue > 0:
        x = _hue_rotate(x, uniform(-hue, hue) * 2 * math.pi)
    sat = float(params.get("saturation", 0.0))
    if sat > 0:
        grey = x.mean(dim=1, keepdim=True)
        x = grey + (x - grey) * uniform(1 - sat, 1 + sat).view(b, 1, 1, 1)
    bright = float(params.get("brightness", 0.0))
    if bright > 0:
        x = x * uniform(1 - bright, 1 + bright).view(b, 1, 1, 1)
    blur_prob = float(params.get("blur_prob", 0.0))
    if blur_prob > 0:
        blurred = torch.rand(b, generator=generator) < blur_prob
        sigmas = uniform(0.5, 1.5)
        for i in torch.nonzero(blurred).flatten().tolist():
            x[i:i + 1] = _blur(x[i:i + 1], float(sigmas[i]))
    lo, hi = (float(v) for v in params.get("scale", (1.0, 1.0)))
    flip = (torch.rand(b, generator=generator) < 0.5) if params.get("flip", False) \
        else torch.zeros(b, dtype=torch.bool)
    if lo != 1.0 or hi != 1.0 or bool(flip.any()):
        x, m = _zoom(x, m, uniform(lo, hi), flip)
    out = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return out, m[:, 0] > 0.5


def simulate_lab(images: torch.Tensor, masks: torch.Tensor, *, hue: float, saturation: float,
                 brightness: float, blur_sigma: float, scale: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Give a whole batch one fixed appearance change, as if imaged in another lab.

    Parameters
    ----------
    images : uint8 tensor of shape (B, H, W, 3)
    masks : bool tensor of shape (B, H, W)
    hue : float
        Hue rotation in turns.
    saturation, brightness : float
        Multipliers (1 = unchanged).
    blur_sigma : float
        Gaussian blur in pixels (0 = none).
    scale : float
        Zoom about the centre (1 = unchanged).

    Returns
    -------
    images : uint8 tensor of shape (B, H, W, 3)
    masks : bool tensor of shape (B, H, W)
    """
    b = images.shape[0]
    x = images.permute(0, 3, 1, 2).float() / 255.0
    m = masks[:, None].float()
    if hue:
        x = _hue_rotate(x, torch.full((b,), hue * 2 * math.pi))
    grey = x.mean(dim=1, keepdim=True)
    x = (grey + (x - grey) * saturation) * brightness
    if blur_sigma > 0:
        x = _blur(x, blur_sigma)
    if scale != 1.0:
        x, m = _zoom(x, m, torch.full((b,), scale), torch.zeros(b, dtype=torch.bool))
    out = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return out, m[:, 0] > 0.5
