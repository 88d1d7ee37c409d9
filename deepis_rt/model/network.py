"""The DeepIS network: a 3-D U-Net with a ResNet-bottleneck encoder and GCN skips.

Architecture (Lee et al., eLife 2020; see docs/model.md):

* stem: 3x3x3 convolution to ``widths[0]`` (BN, ReLU) at full resolution;
* contracting path: per level ``blocks_per_level`` ResNet bottleneck blocks
  (1x1x1 -> 3x3x3 -> 1x1x1, BN/ReLU, projected shortcut when the width or stride
  changes); every level after the first starts with a stride-2 block;
* skips: a global convolutional network (GCN) block per level, two branches of
  separable k x 1 x 1 / 1 x k x 1 / 1 x 1 x k convolutions in opposite orders,
  summed, projecting every level to ``skip_width``;
* expanding path: the coarser map is up-sampled trilinearly (``align_corners=True``)
  to the skip's size, summed with it and refined by a residual convolution block;
* head: 1x1x1 convolution to one channel, the signed distance map in um.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepis_rt.model.base import DeepISNetwork, check_spatial_size, nearest_valid_size
from deepis_rt.model.config import ModelConfig

# check_spatial_size and nearest_valid_size are defined in deepis_rt.model.base (every network uses them)
__all__ = ["DeepIS", "check_spatial_size", "nearest_valid_size"]


class Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1x1 -> 3x3x3 -> 1x1x1) with a projected shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = out_ch // expansion
        self.conv1 = nn.Conv3d(in_ch, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(mid)
        self.conv2 = nn.Conv3d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(mid)
        self.conv3 = nn.Conv3d(mid, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_ch)
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv3d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm3d(out_ch)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.shortcut(x))


class GCN(nn.Module):
    """Global convolutional network block: two separable k-wide branches, summed."""

    def __init__(self, in_ch: int, out_ch: int, k: int) -> None:
        super().__init__()
        p = k // 2
        kz, ky, kx = (k, 1, 1), (1, k, 1), (1, 1, k)
        pz, py, px = (p, 0, 0), (0, p, 0), (0, 0, p)
        self.branch_a = nn.Sequential(
            nn.Conv3d(in_ch, out_ch, kz, padding=pz),
            nn.Conv3d(out_ch, out_ch, ky, padding=py),
            nn.Conv3d(out_ch, out_ch, kx, padding=px),
        )
        self.branch_b = nn.Sequential(
            nn.Conv3d(in_ch, out_ch, kx, padding=px),
            nn.Conv3d(out_ch, out_ch, ky, padding=py),
            nn.Conv3d(out_ch, out_ch, kz, padding=pz),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch_a(x) + self.branch_b(x)


class Refine(nn.Module):
    """Residual refinement block of the expanding path: x + conv(relu(bn(conv(x))))."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(ch, ch, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(ch)
        self.conv2 = nn.Conv3d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.bn(self.conv1(x))))


class DeepIS(DeepISNetwork):
    """DeepIS 3-D segmentation network as the paper describes it; input (N, C, Z, Y, X), output (N, 1, Z, Y, X).

    For a config of another architecture (``"deepis-2020"``), :func:`~deepis_rt.model.build_model`
    builds the matching network.
    """

    architecture = "deepis"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        w = config.widths
        self.stem = nn.Sequential(
            nn.Conv3d(config.in_channels, w[0], 3, padding=1, bias=False),
            nn.BatchNorm3d(w[0]),
            nn.ReLU(inplace=True),
        )
        levels = []
        in_ch = w[0]
        for i, out_ch in enumerate(w):
            blocks = []
            for b in range(config.blocks_per_level):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(Bottleneck(in_ch, out_ch, stride, config.bottleneck_expansion))
                in_ch = out_ch
            levels.append(nn.Sequential(*blocks))
        self.encoder = nn.ModuleList(levels)
        self.skips = nn.ModuleList(
            GCN(ch, config.skip_width, k) for ch, k in zip(w, config.gcn_kernels, strict=True)
        )
        self.refine = nn.ModuleList(Refine(config.skip_width) for _ in w)
        self.head = nn.Conv3d(config.skip_width, config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        feats = []
        h = self.stem(x)
        for level in self.encoder:
            h = level(h)
            feats.append(h)
        d = self.refine[-1](self.skips[-1](feats[-1]))
        for i in range(len(feats) - 2, -1, -1):
            skip = self.skips[i](feats[i])
            up = F.interpolate(d, size=skip.shape[2:], mode="trilinear", align_corners=True)
            d = self.refine[i](skip + up)
        return self.head(d)
