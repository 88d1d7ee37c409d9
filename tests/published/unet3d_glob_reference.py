"""An independent re-implementation of the published DeepIS network, for tests only.

Written from the published code (Jinyeop3110/2020__DeepIS: ``models/unet3D_glob.py``,
``models/layers/GCN_layer1007.py``, ``models/layers/unet_layer.py``) with its original module
names and its original tensor layout (N, 1, Y, X, Z), including the parts deepis-rt drops
(``ConBR0``, the auxiliary ``classifier3`` / ``classifier4`` heads). It deliberately imports
nothing from deepis-rt, so that tests comparing the two compare two implementations.

:func:`save_like_cnntrainer` writes a file the way ``CNNTrainer.save`` does.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class UnetConv3D(nn.Module):
    def __init__(self, in_size, out_size):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv3d(in_size, out_size, (3, 3, 3), (1, 1, 1), (1, 1, 1)),
                                   nn.BatchNorm3d(out_size), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(nn.Conv3d(out_size, out_size, (3, 3, 3), 1, (1, 1, 1)),
                                   nn.BatchNorm3d(out_size), nn.ReLU(inplace=True))

    def forward(self, inputs):
        return self.conv2(self.conv1(inputs))


class Bottleneck(nn.Module):
    def __init__(self, in_c, mid_c, out_c, stride=1, padding=0, downsample=None):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv3d(in_c, mid_c, kernel_size=1, stride=1, padding=0),
                                    nn.BatchNorm3d(mid_c), nn.ReLU(inplace=True))
        self.conv3 = nn.Sequential(nn.Conv3d(mid_c, mid_c, kernel_size=3, stride=stride, padding=padding),
                                   nn.BatchNorm3d(mid_c), nn.ReLU(inplace=True))
        self.increase = nn.Sequential(nn.Conv3d(mid_c, out_c, kernel_size=1, stride=1, padding=0),
                                      nn.BatchNorm3d(out_c))
        self.downsample = downsample
        if self.downsample:
            self.proj = nn.Sequential(nn.Conv3d(in_c, out_c, 1, stride=stride, padding=0, dilation=1),
                                      nn.BatchNorm3d(out_c))

    def forward(self, x):
        h = self.increase(self.conv3(self.reduce(x)))
        if self.downsample:
            h += self.proj(x)
        else:
            h += x
        return F.relu(h)


class ResBlock(nn.Module):
    def __init__(self, n_layers, in_c, mid_c, out_c, stride, padding):
        super().__init__()
        blocks = [Bottleneck(in_c, mid_c, out_c, stride=stride, padding=padding, downsample=True)]
        for _ in range(2, n_layers + 1):
            blocks.append(Bottleneck(out_c, mid_c, out_c, stride=1, padding=1, downsample=False))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(x)


class ConBR(nn.Module):
    def __init__(self, in_c, out_c):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv3d(in_c, out_c, kernel_size=1, padding=0)
        self.conv2 = nn.Conv3d(out_c, out_c, kernel_size=3, padding=1)
        self.conv3 = nn.Conv3d(out_c, out_c, kernel_size=3, padding=1)

    def forward(self, x):
        x = self.conv1(x)
        x_res = self.conv3(self.relu(self.conv2(x)))
        return x + x_res


class GCN(nn.Module):
    def __init__(self, in_c, out_c, k=(7, 7, 3)):
        super().__init__()
        self.conv_l1 = nn.Conv3d(in_c, out_c, kernel_size=(k[0], 1, 1), padding=((k[0] - 1) // 2, 0, 0))
        self.conv_l2 = nn.Conv3d(out_c, out_c, kernel_size=(1, 1, k[2]), padding=(0, 0, (k[2] - 1) // 2))
        self.conv_l3 = nn.Conv3d(out_c, out_c, kernel_size=(1, k[1], 1), padding=(0, (k[1] - 1) // 2, 0))
        self.conv_r1 = nn.Conv3d(in_c, out_c, kernel_size=(1, k[1], 1), padding=(0, (k[1] - 1) // 2, 0))
        self.conv_r2 = nn.Conv3d(out_c, out_c, kernel_size=(1, 1, k[2]), padding=(0, 0, (k[2] - 1) // 2))
        self.conv_r3 = nn.Conv3d(out_c, out_c, kernel_size=(k[0], 1, 1), padding=((k[0] - 1) // 2, 0, 0))

    def forward(self, x):
        x_l = self.conv_l3(self.conv_l2(self.conv_l1(x)))
        x_r = self.conv_r3(self.conv_r2(self.conv_r1(x)))
        return x_l + x_r


class Unet3D_glob(nn.Module):  # noqa: N801 - the published class name
    def __init__(self, feature_scale=1, trans_feature=32):
        super().__init__()
        f = [x // feature_scale for x in [64, 128, 256, 512, 1024]]
        t = trans_feature
        self.conv1 = UnetConv3D(1, f[0])
        self.layer1 = ResBlock(2, f[0], f[0] // 2, f[1], stride=2, padding=1)
        self.layer2 = ResBlock(2, f[1], f[1] // 2, f[2], stride=2, padding=1)
        self.layer3 = ResBlock(2, f[2], f[2] // 2, f[3], stride=2, padding=1)
        self.layer4 = ResBlock(2, f[3], f[3] // 2, f[4], stride=2, padding=1)
        self.gcn1 = nn.Conv3d(f[0], t, 1)
        self.gcn2 = GCN(f[1], t, k=(7, 7, 7))
        self.gcn3 = GCN(f[2], t, k=(7, 7, 7))
        self.gcn4 = GCN(f[3], t, k=(7, 7, 7))
        self.gcn5 = GCN(f[4], t, k=(3, 3, 3))
        self.ConBR0 = ConBR(t, t)
        self.ConBR1 = ConBR(t, t)
        self.ConBR2 = ConBR(t, t)
        self.ConBR3 = ConBR(t, t)
        self.ConBR4 = ConBR(t, t)
        self.final = nn.Sequential(nn.Conv3d(t, 1, 1))
        self.classifier3 = self._classifier(t)
        self.classifier4 = self._classifier(t)

    def forward(self, x):
        fm1 = self.conv1(x)
        fm2 = self.layer1(fm1)
        fm3 = self.layer2(fm2)
        fm4 = self.layer3(fm3)
        fm5 = self.layer4(fm4)
        g1, g2, g3, g4, g5 = self.gcn1(fm1), self.gcn2(fm2), self.gcn3(fm3), self.gcn4(fm4), self.gcn5(fm5)

        def up(a, b):
            return F.interpolate(a, size=b.size()[2:], mode="trilinear", align_corners=True)

        fs4 = self.ConBR4(up(g5, g4) + g4)
        fs3 = self.ConBR3(up(fs4, g3) + g3)
        fs2 = self.ConBR2(up(fs3, g2) + g2)
        fs1 = self.ConBR1(up(fs2, g1) + g1)
        return self.final(fs1), self.classifier3(fs3), self.classifier4(fs4)

    def _classifier(self, inplanes):
        return nn.Sequential(
            nn.Conv3d(inplanes, inplanes // 2, 3, padding=1, bias=False),
            nn.BatchNorm3d(inplanes // 2), nn.ReLU(inplace=True), nn.Dropout(0.1),
            nn.Conv3d(inplanes // 2, 3, 1), nn.Softmax(dim=1),
        )


def make_reference(feature_scale: int, trans_feature: int, seed: int = 0) -> nn.DataParallel:
    """A DataParallel-wrapped network with random weights and non-trivial BN statistics, in eval mode.

    Like ``main_DeepIS.py``: ``nn.DataParallel(Unet3D_glob(...))``. One Adam step on random data
    makes the optimizer state real; BN running statistics are then randomised.
    """
    torch.manual_seed(seed)
    net = nn.DataParallel(Unet3D_glob(feature_scale=feature_scale, trans_feature=trans_feature))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


def save_like_cnntrainer(net: nn.DataParallel, path: Path, epoch: int = 323, best_metric: float = 0.053456,
                         model_type: str = "unet3d_glob", train_step: bool = True, **save_kwargs) -> Path:
    """Train one step (Adam, betas 0.5/0.99 as in main_DeepIS.py), set BN statistics, save as CNNTrainer.save.

    ``save_kwargs`` go to :func:`torch.save` (e.g. ``_use_new_zipfile_serialization=False`` for the
    format of PyTorch < 1.6, which the published code's era wrote).
    """
    optim = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.99))
    if train_step:
        net.train()
        x = torch.randn(2, 1, 16, 16, 16)
        out, c3, c4 = net(x)
        (out.abs().mean() + c3.mean() + c4.mean()).backward()
        optim.step()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    net.eval()
    torch.save({"model_type": model_type,
                "start_epoch": epoch + 1,
                "network": net.state_dict(),
                "optimizer": optim.state_dict(),
                "best_metric": torch.tensor(best_metric)}, path, **save_kwargs)
    return path


def reference_output_zyx(net: nn.DataParallel, x_zyx: torch.Tensor) -> torch.Tensor:
    """The published network's output for a (N, 1, Z, Y, X) input, fed as it was trained: (N, 1, Y, X, Z)."""
    with torch.no_grad():
        out = net.module(x_zyx.permute(0, 1, 3, 4, 2).contiguous())[0]
    return out.permute(0, 1, 4, 2, 3)
