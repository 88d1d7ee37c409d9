"""The network of the authors' published DeepIS training code, in deepis-rt's (Z, Y, X) layout.

``DeepIS2020`` is what ``build_model(config)`` builds for ``config.architecture == "deepis-2020"``
(preset ``deepis-2020``). Its module names and numerics are those of ``Unet3D_glob`` in the
published repository (Jinyeop3110/2020__DeepIS, ``models/unet3D_glob.py`` with the layers of
``models/layers/GCN_layer1007.py`` and ``unet_layer.py``), so a checkpoint of that code loads
key for key once its kernels are permuted (:mod:`deepis_rt.published`):

* ``conv1``: two (3x3x3 conv, BN, ReLU), 1 -> c0 -> c0, at full resolution;
* ``layer1..layer4``: two bottlenecks each (``blocks.0``, ``blocks.1``); inner width = the level's
  input width // 2; ``reduce`` 1x1x1 (BN, ReLU) -> ``conv3`` 3x3x3 (stride 2 in the first block,
  BN, ReLU) -> ``increase`` 1x1x1 (BN); shortcut ``proj`` (1x1x1 with the stride, BN) in the
  first block, identity in the second; ReLU after the sum;
* ``gcn1``: a plain 1x1x1 projection c0 -> t; ``gcn2..gcn5``: GCN blocks (k = 7, 7, 7, 3), two
  branches of three one-axis convolutions, with bias, no BN, summed;
* decoder ``fs4 = ConBR4(up(gcn5) + gcn4)`` ... ``fs1 = ConBR1(up(fs2) + gcn1)``, ``up`` = trilinear
  interpolation to the skip's size with ``align_corners=True``; ConBR = 1x1x1 conv, then
  ``x + conv3(relu(conv2(x)))`` (3x3x3, no BN);
* ``final.0``: 1x1x1 conv t -> 1.

The published network ran on tensors (N, 1, Y, X, Z). Here the same layers run on (N, 1, Z, Y, X):
each GCN convolution runs along the same *physical* axis as in the original (its kernel is oriented
by ``layout``), and the 3x3x3 / stride-2 convolutions and the trilinear up-sampling treat every axis
alike, so with permuted kernels the output equals the original's on the same voxels.
``layout="yxz"`` builds the original orientation (for measurements of the transpose alternative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepis_rt.model.base import DeepISNetwork
from deepis_rt.model.config import ModelConfig

__all__ = ["DeepIS2020", "GCN_AXES"]

#: Physical axis each GCN convolution of the published code runs along (its ``k=(k0, k1, k2)``
#: are the sizes along the original tensor's dims 2, 3, 4 = Y, X, Z).
GCN_AXES: dict[str, str] = {
    "conv_l1": "y", "conv_l2": "z", "conv_l3": "x",
    "conv_r1": "x", "conv_r2": "z", "conv_r3": "y",
}


def _conv_bn_relu(in_ch: int, out_ch: int, k: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv3d(in_ch, out_ch, k, stride=stride, padding=k // 2), nn.BatchNorm3d(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UnetConv(nn.Module):
    """Two (3x3x3 conv, BN, ReLU) at full resolution (the published ``UnetConv3D``)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(in_ch, out_ch, 3)
        self.conv2 = _conv_bn_relu(out_ch, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class Bottleneck2020(nn.Module):
    """Bottleneck of the published code: biased convolutions, inner width given explicitly."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int, project: bool) -> None:
        super().__init__()
        self.reduce = _conv_bn_relu(in_ch, mid_ch, 1)
        self.conv3 = _conv_bn_relu(mid_ch, mid_ch, 3, stride=stride)
        self.increase = _conv_bn_relu(mid_ch, out_ch, 1, relu=False)
        self.proj: nn.Module | None = None
        if project:
            self.proj = nn.Sequential(nn.Conv3d(in_ch, out_ch, 1, stride=stride), nn.BatchNorm3d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.increase(self.conv3(self.reduce(x)))
        return F.relu(h + (self.proj(x) if self.proj is not None else x))


class ResBlock(nn.Module):
    """One encoder level: a down-sampling projected bottleneck, then identity bottlenecks."""

    def __init__(self, n_blocks: int, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        blocks = [Bottleneck2020(in_ch, mid_ch, out_ch, stride=2, project=True)]
        blocks += [Bottleneck2020(out_ch, mid_ch, out_ch, stride=1, project=False) for _ in range(n_blocks - 1)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class GCN2020(nn.Module):
    """GCN block of the published code: left = Y, Z, X and right = X, Z, Y one-axis convolutions."""

    def __init__(self, in_ch: int, out_ch: int, k: int, layout: str = "zyx") -> None:
        super().__init__()
        for name, axis in GCN_AXES.items():
            dim = layout.index(axis)
            size, pad = [1, 1, 1], [0, 0, 0]
            size[dim], pad[dim] = k, k // 2
            first = name.endswith("1")
            self.add_module(name, nn.Conv3d(in_ch if first else out_ch, out_ch, tuple(size), padding=tuple(pad)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.conv_l3(self.conv_l2(self.conv_l1(x)))
        right = self.conv_r3(self.conv_r2(self.conv_r1(x)))
        return left + right


class ConBR(nn.Module):
    """Decoder block of the published code: 1x1x1 conv, then ``x + conv3(relu(conv2(x)))``."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(ch, ch, 1)
        self.conv2 = nn.Conv3d(ch, ch, 3, padding=1)
        self.conv3 = nn.Conv3d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return x + self.conv3(F.relu(self.conv2(x)))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[2:], mode="trilinear", align_corners=True)


class DeepIS2020(DeepISNetwork):
    """``Unet3D_glob`` of the published DeepIS code; input (N, 1, Z, Y, X), output (N, 1, Z, Y, X).

    Parameters
    ----------
    config : ModelConfig
        A config with ``architecture="deepis-2020"`` (e.g. preset ``deepis-2020``).
    layout : {"zyx", "yxz"}
        Tensor layout the GCN kernels are oriented for: deepis-rt's (Z, Y, X) (default), or the
        original (Y, X, Z).
    """

    architecture = "deepis-2020"

    def __init__(self, config: ModelConfig, layout: str = "zyx") -> None:
        super().__init__(config)
        if sorted(layout) != ["x", "y", "z"]:
            raise ValueError(f"layout must name the axes z, y, x once each, got {layout!r}")
        self.layout = layout
        w, t, k = config.widths, config.skip_width, config.gcn_kernels
        self.conv1 = UnetConv(config.in_channels, w[0])
        for i in range(1, len(w)):
            self.add_module(f"layer{i}", ResBlock(config.blocks_per_level, w[i - 1], w[i - 1] // 2, w[i]))
        self.gcn1 = nn.Conv3d(w[0], t, 1)
        for i in range(1, len(w)):
            self.add_module(f"gcn{i + 1}", GCN2020(w[i], t, k[i], layout))
        for i in range(1, len(w)):
            self.add_module(f"ConBR{i}", ConBR(t))
        self.final = nn.Sequential(nn.Conv3d(t, config.out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        n = len(self.config.widths)
        feats = [self.conv1(x)]
        for i in range(1, n):
            feats.append(getattr(self, f"layer{i}")(feats[-1]))
        skips = [self.gcn1(feats[0])] + [getattr(self, f"gcn{i + 1}")(feats[i]) for i in range(1, n)]
        d = skips[-1]
        for i in range(n - 2, -1, -1):
            d = getattr(self, f"ConBR{i + 1}")(_up(d, skips[i]) + skips[i])
        return self.final(d)
