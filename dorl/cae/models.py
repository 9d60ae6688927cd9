"""The cross-domain autoencoders (CAE) whose latent code is the exported cell embedding.

Two architectures share one interface (``model(batch) -> CAEOutput``, ``model.encode(batch)``),
where ``batch`` is a dict with ``"crop"``: float (n, 3, s, s) in [0, 1] (the masked cell) and/or
``"features"``: SAM encoder features, (n, C) pooled or (n, C, h, w) spatial.

* :class:`ConvCAE` (``cae.arch=conv``, the CPU default) has the BC-SAM / AE-CFE shape: four
  stride-2 down-sampling blocks to a small grid, a linear layer to the latent (50-d by default) and
  a mirrored decoder ending in a sigmoid, so the reconstruction lies in SSIM's [0, 1] range. Pooled
  SAM features can be fused into the latent (``cae.input=both`` or ``features``).
* :class:`TransformerCAE` (``cae.arch=transformer``, for GPU runs) has the DoRL shape: a ViT over
  the SAM encoder's spatial tokens with MAE-style random token masking during training; the CLS
  token is projected to the latent, which the same conv image decoder turns back into the cell.
  Unlike DoRL, the alignment loss acts on the exported latent itself, not on a side projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dorl.cae.settings import CAESettings

N_DOWN = 4


@dataclass
class CAEOutput:
    """What a forward pass returns.

    Attributes
    ----------
    z : Tensor of shape (n, latent_dim)
        The latent code (the embedding).
    image : Tensor of shape (n, 3, s, s)
        The reconstructed masked cell, in [0, 1].
    features : Tensor of the input features' shape, or None
        The reconstructed (standardised) SAM features when the model reconstructs them.
    """

    z: torch.Tensor
    image: torch.Tensor
    features: torch.Tensor | None = None


def _conv_block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.2, inplace=True)]


def _check_image_size(image_size: int) -> int:
    step = 2 ** N_DOWN
    if image_size < 2 * step or image_size % step:
        raise ValueError(f"the conv autoencoder needs an image size that is a multiple of {step} "
                         f"and at least {2 * step} px, got {image_size}")
    return image_size // step


class ConvTrunk(nn.Module):
    """Four down-sampling blocks (stride-2 conv + conv, BN, LeakyReLU).

    Maps (n, 3, s, s) to (n, 8 * width, s / 16, s / 16), flattened to (n, out_dim).
    """

    def __init__(self, image_size: int, width: int) -> None:
        super().__init__()
        grid = _check_image_size(image_size)
        layers: list[nn.Module] = []
        c_prev = 3
        for i in range(N_DOWN):
            c = width * 2 ** i
            layers += _conv_block(c_prev, c, 2) + _conv_block(c, c, 1)
            c_prev = c
        self.body = nn.Sequential(*layers)
        self.out_dim = c_prev * grid * grid

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        return self.body(crop).flatten(1)


class ConvDecoder(nn.Module):
    """The trunk's mirror: latent (n, latent_dim) -> image (n, 3, s, s) in [0, 1].

    With ``n_domains`` and ``domain_dim`` > 0 the decoder is domain-conditional: a learned code
    (n, domain_dim) of each cell's domain is concatenated to the latent, so the stain, background
    and illumination of a lab can be drawn from the code and the latent need not carry them. Only
    the decoder sees the domain; the encoder (the embedding) never does.

    Parameters
    ----------
    image_size, width, latent_dim : int
    n_domains : int
        Number of domain codes (ignored when ``domain_dim`` is 0).
    domain_dim : int
        Size of the domain code; 0 gives an unconditional decoder.
    """

    def __init__(self, image_size: int, width: int, latent_dim: int, n_domains: int = 0,
                 domain_dim: int = 0) -> None:
        super().__init__()
        self.grid = _check_image_size(image_size)
        self.c_top = width * 2 ** (N_DOWN - 1)
        self.domain_code = None
        if domain_dim > 0:
            if n_domains < 1:
                raise ValueError("a domain-conditional decoder needs n_domains >= 1")
            self.domain_code = nn.Embedding(n_domains, domain_dim)
        code_dim = domain_dim if self.domain_code is not None else 0
        self.fc = nn.Linear(latent_dim + code_dim, self.c_top * self.grid * self.grid)
        layers: list[nn.Module] = []
        c_prev = self.c_top
        for i in reversed(range(N_DOWN)):
            c = width * 2 ** max(i - 1, 0)
            layers += [nn.ConvTranspose2d(c_prev, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c),
                       nn.LeakyReLU(0.2, inplace=True)] + _conv_block(c, c, 1)
            c_prev = c
        layers += [nn.Conv2d(c_prev, 3, 3, 1, 1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, domain: torch.Tensor | None = None) -> torch.Tensor:
        """Decode latents ``z`` (n, latent_dim) of cells from ``domain`` (n,) int, needed only by
        a domain-conditional decoder, to images (n, 3, s, s)."""
        if self.domain_code is not None:
            if domain is None:
                raise ValueError("the domain-conditional decoder needs each cell's domain index "
                                 "(batch['domain'])")
            z = torch.cat([z, self.domain_code(domain)], dim=1)
        x = self.fc(z).view(len(z), self.c_top, self.grid, self.grid)
        return self.body(x.contiguous(memory_format=torch.channels_last))


class FeatureScaler(nn.Module):
    """Standardises SAM features with statistics of the training cells (kept in the state dict).

    Parameters
    ----------
    mean, std : Tensor of the per-cell feature shape, e.g. (C,) or (C, h, w)
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clamp_min(1e-6).clone())

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std


class ConvCAE(nn.Module):
    """Conv autoencoder over the masked crop, optionally fused with pooled SAM features.

    Parameters
    ----------
    image_size : int
        Side of the (square) crop; a multiple of 16, at least 32.
    latent_dim : int
    width : int
        Channels of the first block; doubled at each of the four blocks.
    use_crop : bool
        Encode the crop.
    feature_scaler : FeatureScaler, optional
        Given when pooled features (n, C) are an input; C comes from its mean.
    reconstruct_features : bool
        Also decode the standardised features from the latent (for ``cae.loss.feature``).
    n_domains, domain_dim : int
        A domain-conditional image decoder (see :class:`ConvDecoder`) when ``domain_dim`` > 0;
        its forward pass then needs ``batch["domain"]`` (n,) int, :meth:`encode` never does.
    """

    def __init__(self, image_size: int, latent_dim: int, width: int, use_crop: bool = True,
                 feature_scaler: FeatureScaler | None = None,
                 reconstruct_features: bool = False, n_domains: int = 0,
                 domain_dim: int = 0) -> None:
        super().__init__()
        if not use_crop and feature_scaler is None:
            raise ValueError("the conv autoencoder needs the crop, the features, or both as input")
        self.trunk = ConvTrunk(image_size, width) if use_crop else None
        self.scaler = feature_scaler
        in_dim = self.trunk.out_dim if use_crop else 0
        if feature_scaler is not None:
            n_feat = feature_scaler.mean.numel()
            hidden = max(4 * latent_dim, 128)
            self.feature_mlp = nn.Sequential(nn.Linear(n_feat, hidden), nn.LeakyReLU(0.2))
            in_dim += hidden
        self.to_latent = nn.Linear(in_dim, latent_dim)
        self.decoder = ConvDecoder(image_size, width, latent_dim, n_domains, domain_dim)
        self.feature_head = None
        if reconstruct_features:
            if feature_scaler is None:
                raise ValueError("feature reconstruction needs features as an input")
            self.feature_head = nn.Linear(latent_dim, feature_scaler.mean.numel())

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Latent codes (n, latent_dim) of a batch."""
        parts = []
        if self.trunk is not None:
            parts.append(self.trunk(batch["crop"]))
        if self.scaler is not None:
            parts.append(self.feature_mlp(self.scaler(batch["features"])))
        return self.to_latent(torch.cat(parts, dim=1))

    def forward(self, batch: dict[str, torch.Tensor]) -> CAEOutput:
        z = self.encode(batch)
        feats = self.feature_head(z) if self.feature_head is not None else None
        return CAEOutput(z, self.decoder(z, batch.get("domain")), feats)


class TransformerCAE(nn.Module):
    """Masked ViT autoencoder over SAM encoder tokens (DoRL shape).

    Parameters
    ----------
    image_size : int
        Side of the reconstructed crop.
    latent_dim : int
    feature_scaler : FeatureScaler
        Statistics of the spatial features (C, h, w); the h * w positions are the tokens.
    dim, depth, heads : int
        Transformer width, encoder depth and attention heads.
    mask_ratio : float
        Fraction of tokens dropped (per cell, at random) during training; none at inference.
    width : int
        Width of the conv image decoder (and of the crop stem when ``use_crop``).
    use_crop : bool
        Add the conv-encoded crop as one extra token (``cae.input=both``).
    reconstruct_features : bool
        Decode all tokens back to the standardised features with a 2-block decoder.
    n_domains, domain_dim : int
        A domain-conditional image decoder when ``domain_dim`` > 0 (as in :class:`ConvCAE`).
    """

    def __init__(self, image_size: int, latent_dim: int, feature_scaler: FeatureScaler,
                 dim: int, depth: int, heads: int, mask_ratio: float, width: int,
                 use_crop: bool = False, reconstruct_features: bool = False,
                 n_domains: int = 0, domain_dim: int = 0) -> None:
        super().__init__()
        if feature_scaler.mean.dim() != 3:
            raise ValueError("the transformer autoencoder needs spatial SAM features (C, h, w); "
                             "set sam.infer.features=spatial")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        channels, h, w = feature_scaler.mean.shape
        self.scaler = feature_scaler
        self.n_tokens = h * w
        self.mask_ratio = float(mask_ratio)
        self.embed = nn.Linear(channels, dim)
        self.pos = nn.Parameter(torch.randn(1, self.n_tokens, dim) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.crop_stem = None
        if use_crop:
            self.crop_stem = ConvTrunk(image_size, width)
            self.crop_proj = nn.Linear(self.crop_stem.out_dim, dim)

        def blocks(n: int) -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0,
                                               activation="gelu", batch_first=True,
                                               norm_first=True)
            return nn.TransformerEncoder(layer, n, enable_nested_tensor=False)

        self.encoder = blocks(depth)
        self.norm = nn.LayerNorm(dim)
        self.to_latent = nn.Linear(dim, latent_dim)
        self.decoder = ConvDecoder(image_size, width, latent_dim, n_domains, domain_dim)
        self.feature_decoder = None
        if reconstruct_features:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.dec_pos = nn.Parameter(torch.randn(1, self.n_tokens, dim) * 0.02)
            self.feature_decoder = blocks(2)
            self.feature_head = nn.Linear(dim, channels)
        self.grid = (h, w)

    def _tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Visible tokens (n, k, dim) (with position) and their indices (n, k), None if all kept."""
        feats = self.scaler(batch["features"]).flatten(2).transpose(1, 2)  # (n, hw, C)
        tokens = self.embed(feats) + self.pos
        if not self.training or self.mask_ratio == 0.0:
            return tokens, None
        keep = max(1, int(round(self.n_tokens * (1.0 - self.mask_ratio))))
        idx = torch.rand(len(tokens), self.n_tokens, device=tokens.device).argsort(1)[:, :keep]
        visible = torch.gather(tokens, 1, idx[..., None].expand(-1, -1, tokens.shape[-1]))
        return visible, idx

    def _encode(self, batch: dict[str, torch.Tensor]):
        visible, idx = self._tokens(batch)
        extra = [self.cls.expand(len(visible), -1, -1)]
        if self.crop_stem is not None:
            extra.append(self.crop_proj(self.crop_stem(batch["crop"]))[:, None])
        seq = self.norm(self.encoder(torch.cat(extra + [visible], dim=1)))
        return self.to_latent(seq[:, 0]), seq[:, len(extra):], idx

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Latent codes (n, latent_dim) of a batch (no masking in eval mode)."""
        return self._encode(batch)[0]

    def forward(self, batch: dict[str, torch.Tensor]) -> CAEOutput:
        z, visible, idx = self._encode(batch)
        feats = None
        if self.feature_decoder is not None:
            n, dim = len(z), visible.shape[-1]
            full = visible
            if idx is not None:  # put the visible tokens back among mask tokens
                full = self.mask_token.expand(n, self.n_tokens, dim).scatter(
                    1, idx[..., None].expand(-1, -1, dim), visible)
            out = self.feature_head(self.feature_decoder(full + self.dec_pos))  # (n, hw, C)
            feats = out.transpose(1, 2).reshape(n, -1, *self.grid)
        return CAEOutput(z, self.decoder(z, batch.get("domain")), feats)


def build_autoencoder(settings: CAESettings, image_size: int,
                      feature_scaler: FeatureScaler | None, n_domains: int) -> nn.Module:
    """Build the autoencoder ``settings`` describe.

    Parameters
    ----------
    settings : CAESettings
        Architecture, input, latent size, width, domain code, transformer shape; features are
        reconstructed when ``settings.loss.feature`` > 0.
    image_size : int
        Side of the crops the model reconstructs.
    feature_scaler : FeatureScaler or None
        Required when ``settings.input`` is ``features`` or ``both``.
    n_domains : int
        Number of domains (the domain-conditional decoder holds one code per domain).
    """
    if settings.uses_features and feature_scaler is None:
        raise ValueError(f"cae.input={settings.input} needs features, but the segmentation "
                         f"stage stored none (sam.infer.features=none)")
    recon_feats = settings.loss.feature > 0
    if settings.arch == "conv":
        return ConvCAE(image_size, settings.latent_dim, settings.width, settings.uses_crop,
                       feature_scaler if settings.uses_features else None, recon_feats,
                       n_domains, settings.domain_code_dim)
    if not settings.uses_features:
        raise ValueError("cae.arch=transformer works on SAM tokens: set cae.input=features "
                         "(or both) and sam.infer.features=spatial")
    t = settings.transformer
    return TransformerCAE(image_size, settings.latent_dim, feature_scaler, t.dim, t.depth,
                          t.heads, t.mask_ratio, settings.width, settings.uses_crop,
                          recon_feats, n_domains, settings.domain_code_dim)
