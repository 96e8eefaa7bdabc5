"""Wide residual networks (Zagoruyko & Komodakis 2016), WRN-d-k for CIFAR.

A 3x3 stem convolution to 16 channels, three stages of `n = (depth - 4) / 6`
pre-activation wide blocks (BN -> ReLU -> conv3x3 -> BN -> ReLU -> [dropout] -> conv3x3)
of widths 16k, 32k, 64k (stride 2 at the start of the second and third stage), a final
BN -> ReLU, global average pooling and a linear head. Where a block changes the width or
resolution, its shortcut is a 1x1 convolution applied to the pre-activated input;
otherwise it is the identity. This is the definition the CRD/mdistiller benchmarks use
for their `wrn_40_2` teacher and `wrn_16_2` student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.models.init import kaiming_init


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-dropout-conv3x3, plus the shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.dropout = float(dropout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        # The projection sees the pre-activated input; the identity the raw one.
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """Stem `conv1`, stages `layer1..layer3`, final `bn` + `relu`, `pool` (GAP + flatten), `fc`."""

    default_taps: dict[str, str] = {"stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "embedding": "pool"}

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, depth: int, widen: int, dropout: float = 0.0):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"a wide ResNet needs image inputs (C, H, W), got {tuple(input_shape)}")
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"depth must be 6n + 4 with n >= 1, got {depth}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(int(input_shape[0]), 16, 3, padding=1, bias=False)
        in_ch = 16
        for i, (out_ch, stride) in enumerate(zip((16 * widen, 32 * widen, 64 * widen), (1, 2, 2)), start=1):
            blocks = [WideBlock(in_ch, out_ch, stride, dropout)] + [WideBlock(out_ch, out_ch, 1, dropout) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            in_ch = out_ch
        self.bn = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_ch, num_classes)
        self.embedding_dim = in_ch
        kaiming_init(self, zero_linear_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(self.relu(self.bn(x))))


def wrn_40_2(input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0) -> WideResNet:
    """WRN-40-2: 2,255,156 parameters for 3x32x32 / 100 classes."""
    return WideResNet(input_shape, num_classes, depth=40, widen=2, dropout=dropout)


def wrn_16_2(input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0) -> WideResNet:
    """WRN-16-2: 703,284 parameters for 3x32x32 / 100 classes."""
    return WideResNet(input_shape, num_classes, depth=16, widen=2, dropout=dropout)
