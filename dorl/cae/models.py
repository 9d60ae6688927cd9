"""The cross-domain autoencoder: the pretrained cell encoder itself, with the light heads its
losses need.

* ``encoder``: the cell encoder of ``features.encoders`` (an ImageNet EfficientNet-Lite), whose
  pooled features are the embedding. It is what training adapts.
* ``projector``: a two-layer MLP to the space the contrastive term compares views in (SimCLR's
  projection head; the embedding is taken before it).
* ``decoder``: a light convolutional decoder of the encoder's feature map back to the cell, for
  the SSIM reconstruction term (built only when that term is on).
* ``classifier``: a linear layer over the pooled features, for the source-label term and the
  pseudo-labels of the class-balanced MMD (built only with ``cae.supervision``).

Only the encoder is kept after training (:func:`dorl.cae.train.train_autoencoder`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dorl.features.efficientnet import EfficientNetLite


@dataclass
class CAEOutput:
    """What one forward pass gives for a batch of B crops.

    Attributes
    ----------
    pooled : Tensor of shape (B, 1280)
        The embedding.
    projected : Tensor of shape (B, projection_dim)
    image : Tensor of shape (B, 3, H, W) in [0, 1], or None
        The reconstruction (None without a decoder).
    logits : Tensor of shape (B, n_classes), or None
        (None without a classifier.)
    """

    pooled: torch.Tensor
    projected: torch.Tensor
    image: torch.Tensor | None
    logits: torch.Tensor | None


class CellDecoder(nn.Module):
    """(B, C, h, w) feature map -> (B, 3, h * 2**n_up, w * 2**n_up) image in [0, 1]."""

    def __init__(self, in_channels: int, n_up: int = 5, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 1), nn.ReLU(inplace=True)]
        c = width
        for i in range(n_up):
            c_out = max(16, width >> (i + 1))
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(c, c_out, 3, padding=1), nn.ReLU(inplace=True)]
            c = c_out
        layers += [nn.Conv2d(c, 3, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.net(feature_map)


class CellAutoencoder(nn.Module):
    """The encoder and its training heads.

    Parameters
    ----------
    encoder : EfficientNetLite
        Pretrained (or random, for tests); trained in place.
    projection_dim : int
    reconstruct : bool
        Build the decoder.
    n_classes : int
        Classes of the source-label head (0: no head).
    """

    def __init__(self, encoder: EfficientNetLite, projection_dim: int, reconstruct: bool,
                 n_classes: int):
        super().__init__()
        dim = encoder.out_dim
        self.encoder = encoder
        self.projector = nn.Sequential(nn.Linear(dim, 512), nn.ReLU(inplace=True),
                                       nn.Linear(512, projection_dim))
        self.decoder = CellDecoder(dim) if reconstruct else None
        self.classifier = nn.Linear(dim, n_classes) if n_classes else None

    def forward(self, pixels: torch.Tensor) -> CAEOutput:
        """``pixels``: (B, 3, H, W), 0..255, H and W multiples of 32 for the decoder."""
        feature_map = self.encoder.feature_map(pixels)
        pooled = feature_map.mean(dim=(2, 3))
        return CAEOutput(
            pooled, self.projector(pooled),
            None if self.decoder is None else self.decoder(feature_map),
            None if self.classifier is None else self.classifier(pooled))

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters trained from scratch (a larger learning rate than the encoder's)."""
        return [p for name, p in self.named_parameters() if not name.startswith("encoder.")]
