"""CIFAR ResNets (He et al. 2016, section 4.2) as the distillation benchmarks define them.

The networks used by CRD (Tian et al. 2020) and mdistiller (Zhao et al. 2022): a 3x3
stem convolution, three stages of `n = (depth - 2) / 6` BasicBlocks (two 3x3 convolutions
each), the second and third stage halving the map with stride 2, then global average
pooling and a linear head. Where a block changes the number of channels or the resolution,
its shortcut is a 1x1 convolution + BatchNorm (option B); otherwise it is the identity.

`widths` is (stem, stage1, stage2, stage3):

- resnet20, resnet56: (16, 16, 32, 64)
- resnet8x4, resnet32x4: (32, 64, 128, 256), four times wider than the stages of resnet20

Written from the papers' description; the counts match the ones the benchmarks report
(for 3x32x32 inputs and 100 classes, checked in tests/test_models.py).
"""

from __future__ import annotations

import torch
from torch import nn

from kdistill.models.init import kaiming_init


class BasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class CifarResNet(nn.Module):
    """Stem (`conv1`, `bn1`, `relu`), stages `layer1..layer3`, `pool` (GAP + flatten), `fc`."""

    default_taps: dict[str, str] = {"stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "embedding": "pool"}

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, depth: int, widths: tuple[int, int, int, int]):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"a CIFAR ResNet needs image inputs (C, H, W), got {tuple(input_shape)}")
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        stem, *stages = widths
        self.conv1 = nn.Conv2d(int(input_shape[0]), stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        in_ch = stem
        for i, (out_ch, stride) in enumerate(zip(stages, (1, 2, 2)), start=1):
            blocks = [BasicBlock(in_ch, out_ch, stride)] + [BasicBlock(out_ch, out_ch) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            in_ch = out_ch
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_ch, num_classes)
        self.embedding_dim = in_ch
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x))


def resnet20(input_shape: tuple[int, ...], num_classes: int) -> CifarResNet:
    """ResNet-20, widths 16-16-32-64: 278,324 parameters for 3x32x32 / 100 classes (272,474 for 10)."""
    return CifarResNet(input_shape, num_classes, depth=20, widths=(16, 16, 32, 64))


def resnet56(input_shape: tuple[int, ...], num_classes: int) -> CifarResNet:
    """ResNet-56, widths 16-16-32-64: 861,620 parameters for 3x32x32 / 100 classes (855,770 for 10)."""
    return CifarResNet(input_shape, num_classes, depth=56, widths=(16, 16, 32, 64))


def resnet8x4(input_shape: tuple[int, ...], num_classes: int) -> CifarResNet:
    """ResNet-8x4, widths 32-64-128-256: 1,233,540 parameters for 3x32x32 / 100 classes."""
    return CifarResNet(input_shape, num_classes, depth=8, widths=(32, 64, 128, 256))


def resnet32x4(input_shape: tuple[int, ...], num_classes: int) -> CifarResNet:
    """ResNet-32x4, widths 32-64-128-256: 7,433,860 parameters for 3x32x32 / 100 classes."""
    return CifarResNet(input_shape, num_classes, depth=32, widths=(32, 64, 128, 256))
