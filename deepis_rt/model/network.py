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

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepis_rt.errors import ShapeError
from deepis_rt.model.config import ModelConfig, preset_config

__all__ = ["DeepIS", "build_model", "check_spatial_size", "nearest_valid_size"]


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


def nearest_valid_size(size: int, multiple: int) -> int:
    """The multiple of ``multiple`` closest to ``size`` (at least ``multiple``)."""
    return max(multiple, int(round(size / multiple)) * multiple)


def check_spatial_size(shape: tuple[int, ...], multiple: int) -> None:
    """Raise :class:`ShapeError` unless every spatial size is a multiple of ``multiple``.

    ``shape`` is the (Z, Y, X) part of an input's shape.
    """
    bad = [s for s in shape if s <= 0 or s % multiple]
    if bad:
        nearest = tuple(nearest_valid_size(s, multiple) for s in shape)
        padded = tuple(-(-s // multiple) * multiple for s in shape)
        raise ShapeError(
            f"model | spatial size {tuple(shape)} (Z, Y, X) is not a multiple of {multiple} "
            f"along every axis; nearest valid size is {nearest} (pad to {padded} to keep "
            "every voxel; deepis_rt.load() pads automatically)"
        )


class DeepIS(nn.Module):
    """DeepIS 3-D segmentation network; input (N, C, Z, Y, X), output (N, 1, Z, Y, X).

    ``DeepIS(config)`` with ``config.architecture == "deepis-2020"`` builds the published code's
    network (:class:`~deepis_rt.model.deepis2020.DeepIS2020`, a subclass).
    """

    def __new__(cls, config: ModelConfig | None = None, *args: Any, **kwargs: Any) -> DeepIS:
        if cls is DeepIS and config is not None and config.architecture == "deepis-2020":
            from deepis_rt.model.deepis2020 import DeepIS2020

            cls = DeepIS2020
        return super().__new__(cls)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
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

    def _check_input(self, x: torch.Tensor) -> None:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or _is_exporting()):
            if x.dim() != 5:
                raise ShapeError(
                    f"model | expected a 5-D tensor (N, C, Z, Y, X), got shape {tuple(x.shape)}"
                )
            check_spatial_size(tuple(x.shape[2:]), self.config.size_multiple)

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


def _is_exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting()) if is_exporting is not None else False


def build_model(preset: str | ModelConfig = "deepis", **overrides: Any) -> DeepIS:
    """Build a DeepIS network.

    Parameters
    ----------
    preset : str or ModelConfig
        ``"deepis"`` (the paper's text), ``"deepis-lite"`` (CPU/demo variant), ``"deepis-2020"``
        (the published training code's network, :mod:`deepis_rt.model.deepis2020`), or a config.
    **overrides
        Config fields to change, e.g. ``widths=(4, 8, 8, 8, 8)`` for tiny test models.

    Returns
    -------
    DeepIS
        The network in training mode, randomly initialised.
    """
    if isinstance(preset, ModelConfig):
        config = preset.replace(**overrides) if overrides else preset
    else:
        config = preset_config(preset, **overrides)
    return DeepIS(config)
