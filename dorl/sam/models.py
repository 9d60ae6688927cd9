"""SAM backbones behind one batched wrapper: LiteMedSAM (TinyViT), SAM ViT-B/L/H, a tiny test model.

``segment_anything``'s package ``__init__`` imports torchvision, which cannot be installed next to
the CPU build of torch; only its ``modeling`` subpackage is imported here, through a bare package
module registered before the first import (no torchvision needed).

Checkpoints are found, read and checked by :mod:`dorl.sam.checkpoints`; the SHA-256 of the loaded
file goes into the provenance dict.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dorl.provenance import sha256_file
from dorl.sam.checkpoints import (
    check_backbone,
    default_checkpoint,
    load_checked,
    read_state_dict,
)
from dorl.sam.tiny_vit import TinyViT


def _register_bare_segment_anything() -> None:
    """Make ``segment_anything`` importable without running its ``__init__`` (needs torchvision)."""
    if "segment_anything" in sys.modules:
        return
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("segment-anything is not installed: pip install segment-anything==1.0")
    package = types.ModuleType("segment_anything")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["segment_anything"] = package


_register_bare_segment_anything()
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer  # noqa: E402

logger = logging.getLogger(__name__)

PROMPTS = ("none", "center_box", "whole_box")
_SAM_MEAN, _SAM_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
_VIT_SPECS = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


class SamViTEncoder(ImageEncoderViT):
    """SAM's ViT image encoder that can also return its pre-neck features."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-neck features: (B, 3, S, S) -> (B, embed_dim, S / 16, S / 16)."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x.permute(0, 3, 1, 2)


class CellSAM(nn.Module):
    """An image encoder, SAM's prompt encoder and mask decoder, batched over single-cell crops.

    Parameters
    ----------
    backbone : str
        Registry name (see :data:`BACKBONES`).
    image_encoder : nn.Module
        Maps (B, 3, S, S) to (B, C, h, w) and offers ``forward_features`` (pre-neck map).
    prompt_encoder : PromptEncoder
    mask_decoder : MaskDecoder
    image_size : int
        Side S of the square encoder input.
    pixel_mean, pixel_std : sequence of 3 float
        Per-channel normalisation of 0..255 pixels.
    """

    def __init__(self, backbone: str, image_encoder: nn.Module, prompt_encoder: PromptEncoder,
                 mask_decoder: MaskDecoder, image_size: int, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.image_size = int(image_size)
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1),
                             persistent=False)

    @property
    def embed_dim(self) -> int:
        """Channels of the image embedding (256 for the real backbones)."""
        return self.prompt_encoder.embed_dim

    def fold_batchnorm(self) -> "CellSAM":
        """Fold the encoder's BatchNorm into its convolutions (no-op for ViTs); return self."""
        fold = getattr(self.image_encoder, "fold_batchnorm", None)
        if fold is not None:
            fold()
        return self

    def train(self, mode: bool = True) -> "CellSAM":
        """Set train/eval mode; eval mode also folds the encoder's BatchNorm (exact, faster)."""
        if not mode:
            self.fold_batchnorm()
        return super().train(mode)

    def preprocess(self, images: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
        """Resize RGB images to the encoder's input size and normalise them.

        Parameters
        ----------
        images : uint8 array or tensor of shape (B, H, W, 3), or a sequence of (H_i, W_i, 3) arrays

        Returns
        -------
        float32 tensor of shape (B, 3, S, S) on the model's device
        """
        if isinstance(images, (np.ndarray, torch.Tensor)):
            if images.ndim != 4:
                raise ValueError(f"preprocess expects a batch of shape (B, H, W, 3), got "
                                 f"{tuple(images.shape)}")
            images = list(images)
        device = self.pixel_mean.device
        batch = []
        for i, image in enumerate(images):
            tensor = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image))
            if tensor.dtype != torch.uint8 or tensor.ndim != 3 or tensor.shape[-1] != 3:
                raise ValueError(f"image {i}: expected uint8 RGB of shape (H, W, 3), got "
                                 f"{tensor.dtype} {tuple(tensor.shape)}")
            x = tensor.to(device).permute(2, 0, 1)[None].float()
            if x.shape[-2:] != (self.image_size, self.image_size):
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                  align_corners=False, antialias=True)
            batch.append(x)
        if not batch:
            raise ValueError("preprocess got no images")
        return (torch.cat(batch) - self.pixel_mean) / self.pixel_std

    def encode(self, x: torch.Tensor, return_features: bool = False):
        """Run the image encoder.

        Parameters
        ----------
        x : float tensor of shape (B, 3, S, S)
            Output of :meth:`preprocess`.
        return_features : bool
            Also return the pre-neck features.

        Returns
        -------
        tensor of shape (B, C, h, w), or dict
            The image embedding (C = :attr:`embed_dim`). With ``return_features`` a dict with
            ``"embedding"`` (B, C, h, w), ``"spatial"`` (B, C_enc, h, w), the encoder's last-stage
            map before the neck (C_enc = 320 for LiteMedSAM, 768 for vit_b), and ``"pooled"``
            (B, C_enc), its spatial mean.
        """
        spatial = self.image_encoder.forward_features(x)
        embedding = self.image_encoder.neck(spatial)
        if not return_features:
            return embedding
        return {"embedding": embedding, "spatial": spatial, "pooled": spatial.mean(dim=(2, 3))}

    def prompt_boxes(self, batch: int, prompt: str, box_fraction: float) -> torch.Tensor | None:
        """Box prompts (B, 4) as x0, y0, x1, y1 in input pixels, or None for ``prompt="none"``."""
        if prompt not in PROMPTS:
            raise ValueError(f"unknown prompt {prompt!r}; choose one of {', '.join(PROMPTS)}")
        if prompt == "none":
            return None
        s = float(self.image_size)
        if prompt == "whole_box":
            box = [0.0, 0.0, s - 1, s - 1]
        else:
            if not 0.0 < box_fraction <= 1.0:
                raise ValueError(f"box_fraction must lie in (0, 1], got {box_fraction}")
            half = box_fraction * s / 2
            box = [s / 2 - half, s / 2 - half, s / 2 + half, s / 2 + half]
        return self.pixel_mean.new_tensor(box).expand(batch, 4)

    def decode(self, embeddings: torch.Tensor, prompt: str, box_fraction: float = 0.9,
               return_iou: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Predict one mask per image, one prompt per image (no per-prompt repetition).

        Parameters
        ----------
        embeddings : tensor of shape (B, C, h, w)
            Output of :meth:`encode`.
        prompt : {"none", "center_box", "whole_box"}
            ``none``: no sparse prompt, only the learned no-mask dense embedding (automatic mode);
            ``center_box``: a centred square covering ``box_fraction`` of each side;
            ``whole_box``: the whole image.
        box_fraction : float
            Side fraction of the centred box.
        return_iou : bool
            Also return SAM's own estimate of each mask's IoU with the true object (the IoU
            head on the output token of the single-mask output).

        Returns
        -------
        tensor of shape (B, 1, 4h, 4w)
            Mask logits (threshold at 0).
        tensor of shape (B,)
            The predicted IoU, with ``return_iou``.
        """
        b, _, h, w = embeddings.shape
        boxes = self.prompt_boxes(b, prompt, box_fraction)
        if boxes is None:
            sparse = embeddings.new_zeros((b, 0, self.embed_dim))
        else:
            sparse, _ = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        image_pe = self.prompt_encoder.pe_layer((h, w)).unsqueeze(0).expand(b, -1, -1, -1)
        decoder = self.mask_decoder
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        hs, src = decoder.transformer(embeddings + dense, image_pe, tokens)
        src = src.transpose(1, 2).reshape(b, -1, h, w)
        upscaled = decoder.output_upscaling(src)
        hyper = decoder.output_hypernetworks_mlps[0](hs[:, 1, :])
        bu, cu, hu, wu = upscaled.shape
        logits = (hyper.unsqueeze(1) @ upscaled.reshape(bu, cu, hu * wu)).view(bu, 1, hu, wu)
        if not return_iou:
            return logits
        return logits, decoder.iou_prediction_head(hs[:, 0, :])[:, 0]

    def forward(self, images: torch.Tensor, prompt: str, box_fraction: float = 0.9) -> torch.Tensor:
        """Encode and decode, with gradients.

        ``images`` is a float (B, 3, S, S) batch from :meth:`preprocess`, or uint8 (B, H, W, 3),
        which is preprocessed first. Returns mask logits of shape (B, 1, 4h, 4w).
        """
        if images.dtype == torch.uint8:
            images = self.preprocess(images)
        return self.decode(self.encode(images), prompt, box_fraction)


def _prompt_and_decoder(image_size: int, grid: int, dim: int = 256, mask_chans: int = 16,
                        decoder_depth: int = 2, mlp_dim: int = 2048, heads: int = 8) -> tuple:
    prompt_encoder = PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                   input_image_size=(image_size, image_size),
                                   mask_in_chans=mask_chans)
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=dim,
        transformer=TwoWayTransformer(depth=decoder_depth, embedding_dim=dim, mlp_dim=mlp_dim,
                                      num_heads=heads))
    return prompt_encoder, mask_decoder


def _check_size(backbone: str, image_size: int, multiple: int) -> None:
    if image_size < 2 * multiple or image_size % multiple:
        raise ValueError(f"backbone {backbone!r} needs sam.image_size to be a multiple of "
                         f"{multiple} (at least {2 * multiple}), got {image_size}")


def vit_window_size(image_size: int) -> int:
    """Attention window for a SAM ViT: 14 at 1024 px (as trained), else the divisor of the 16-px
    token grid closest to 14, so that windowed blocks never pad (14 at 224, 16 at 256 and 512)."""
    grid = image_size // 16
    if image_size == 1024:
        return 14
    divisors = [d for d in range(1, grid + 1) if grid % d == 0]
    return min(divisors, key=lambda d: (abs(d - 14), -d))


def _build_litemedsam(image_size: int) -> CellSAM:
    _check_size("litemedsam", image_size, 4)
    prompt_encoder, mask_decoder = _prompt_and_decoder(image_size, image_size // 4)
    return CellSAM("litemedsam", TinyViT(), prompt_encoder, mask_decoder, image_size,
                   (0.0, 0.0, 0.0), (255.0, 255.0, 255.0))


def _build_vit(name: str, image_size: int) -> CellSAM:
    _check_size(name, image_size, 16)
    spec = _VIT_SPECS[name]
    window = vit_window_size(image_size)
    encoder = SamViTEncoder(img_size=image_size, patch_size=16, mlp_ratio=4, out_chans=256,
                            norm_layer=partial(nn.LayerNorm, eps=1e-6), qkv_bias=True,
                            use_rel_pos=True, window_size=window, **spec)
    logger.debug("%s at %d px: %dx%d tokens, window %d", name, image_size, image_size // 16,
                 image_size // 16, window)
    prompt_encoder, mask_decoder = _prompt_and_decoder(image_size, image_size // 16)
    return CellSAM(name, encoder, prompt_encoder, mask_decoder, image_size, _SAM_MEAN, _SAM_STD)


def _build_tiny(image_size: int) -> CellSAM:
    """Random-init test model: 2-block, 32-wide ViT with 8 px patches (8x8 tokens at 64 px)."""
    _check_size("tiny", image_size, 16)
    grid = image_size // 8
    encoder = SamViTEncoder(img_size=image_size, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                            mlp_ratio=4, out_chans=32, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                            qkv_bias=True, use_rel_pos=True, window_size=grid // 2,
                            global_attn_indexes=(1,))
    prompt_encoder, mask_decoder = _prompt_and_decoder(image_size, grid, dim=32, mask_chans=4,
                                                       decoder_depth=1, mlp_dim=64, heads=2)
    return CellSAM("tiny", encoder, prompt_encoder, mask_decoder, image_size, _SAM_MEAN, _SAM_STD)


BACKBONES: dict[str, Callable[[int], CellSAM]] = {
    "litemedsam": _build_litemedsam,
    "vit_b": partial(_build_vit, "vit_b"),
    "vit_l": partial(_build_vit, "vit_l"),
    "vit_h": partial(_build_vit, "vit_h"),
    "tiny": _build_tiny,
}


def build_sam(backbone: str, checkpoint: str | Path | None = "default", image_size: int = 256,
              fold: bool = True, seed: int = 0) -> CellSAM:
    """Build a SAM backbone, optionally with pretrained weights.

    Parameters
    ----------
    backbone : {"litemedsam", "vit_b", "vit_l", "vit_h", "tiny"}
    checkpoint : str, Path or None
        ``None``: random weights. ``"default"``: the backbone's default file (see
        :func:`dorl.sam.checkpoints.default_checkpoint`). A path: that file.
    image_size : int
        Side of the square encoder input (a multiple of 4 for litemedsam, of 16 for the ViTs).
        ViT position tables are interpolated from the checkpoint's size.
    fold : bool, default=True
        Fold the encoder's BatchNorm into its convolutions (eval mode does). False keeps the
        BatchNorm layers, for re-estimating their statistics per domain
        (:mod:`dorl.features.adabn`).
    seed : int, default=0
        Seeds random weights (no checkpoint), so that a random-init model is the same in every
        process: a run and a later ``dorl apply`` of its adapter see the same base weights.

    Returns
    -------
    CellSAM
        In eval mode, on the CPU; the loaded file is in ``model.checkpoint_path``.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown SAM backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    path = default_checkpoint(backbone) if checkpoint == "default" else checkpoint
    if path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = BACKBONES[backbone](int(image_size))
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SAM checkpoint for {backbone} not found: {path}")
        state = read_state_dict(path)
        # Before building: a file of another backbone fails at once, not after a ViT-H is made.
        check_backbone(state, backbone, path, known=tuple(BACKBONES))
        model = BACKBONES[backbone](int(image_size))
    model.checkpoint_path = path
    if path is not None:
        load_checked(model, state, path)
        logger.info("loaded %s weights from %s at %d px", backbone, path, image_size)
    else:
        logger.info("built %s with random weights at %d px", backbone, image_size)
    return model.eval() if fold else nn.Module.train(model, False)


def sam_from_config(cfg) -> tuple[CellSAM, dict]:
    """Build the model named by ``cfg.sam`` (backbone, checkpoint, image_size).

    Returns
    -------
    model : CellSAM
    provenance : dict
        ``backbone``, ``checkpoint`` (path or None), ``checkpoint_sha256`` (or None) and
        ``image_size``.
    """
    checkpoint = cfg.sam.checkpoint if cfg.sam.checkpoint else "default"
    model = build_sam(cfg.sam.backbone, checkpoint, int(cfg.sam.image_size), seed=int(cfg.seed))
    path = model.checkpoint_path
    provenance = {"backbone": model.backbone, "checkpoint": None if path is None else str(path),
                  "checkpoint_sha256": None if path is None else sha256_file(path),
                  "image_size": model.image_size}
    return model, provenance
