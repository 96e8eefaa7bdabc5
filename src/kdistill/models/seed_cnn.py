"""The seed experiment's two CIFAR models, rebuilt as VGG-style networks of matching size.

These are *sized to match* the seed's teacher (~14.7M parameters) and student (~0.44M)
on 3x32x32 inputs with 10 classes; they are not bit-identical to the seed's code, whose
layer-by-layer definition we do not have. Both are plain stacks of
[Conv3x3 (no bias) -> BatchNorm -> ReLU] blocks with 2x2 max-pooling between stages
(Simonyan & Zisserman 2015, with batch normalisation as in Ioffe & Szegedy 2015), then
global average pooling and a linear head, so they also run on other input sizes
(1x28x28 Fashion-MNIST, 1x8x8 digits): a stage only pools while its map is at least
2 pixels wide.
"""

from __future__ import annotations

import torch
from torch import nn

# One list per stage: the widths of its convolutions; every stage ends with MaxPool2d(2).
LARGE_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
SMALL_STAGES = ((32, 32), (64, 64), (128, 128, 128))


class _VGGStyle(nn.Module):
    """Stages `layer1..layerN` of conv-BN-ReLU blocks + max-pool, then `pool` (GAP + flatten),
    then `classifier` (Dropout -> Linear)."""

    stage_widths: tuple[tuple[int, ...], ...] = ()

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, dropout: float):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"{type(self).__name__} needs image inputs (C, H, W), got {tuple(input_shape)}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        in_ch, h, w = (int(d) for d in input_shape)
        size = min(h, w)
        for i, widths in enumerate(self.stage_widths, start=1):
            layers: list[nn.Module] = []
            for out_ch in widths:
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
                in_ch = out_ch
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            self.add_module(f"layer{i}", nn.Sequential(*layers))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        head: list[nn.Module] = [nn.Dropout(float(dropout))] if dropout > 0 else []
        head.append(nn.Linear(in_ch, num_classes))
        self.classifier = nn.Sequential(*head)
        self.embedding_dim = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, len(self.stage_widths) + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.classifier(self.pool(x))


class SeedLargeCNN(_VGGStyle):
    """The seed's teacher, sized to match: the VGG-16 convolutional layout with BatchNorm.

    Stages (conv widths): 64-64 | 128-128 | 256-256-256 | 512-512-512 | 512-512-512, each
    followed by 2x2 max-pooling, then global average pooling, Dropout(`dropout`) and
    Linear(512, num_classes).

    Parameters: exactly 14,724,042 for 3x32x32 inputs and 10 classes (the seed's ~14.7M:
    +0.16%); 14,722,890 for 1-channel inputs; the head is 512 * num_classes + num_classes.
    """

    stage_widths = LARGE_STAGES
    default_taps: dict[str, str] = {
        "stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "stage4": "layer4", "stage5": "layer5",
        "embedding": "pool",
    }

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.5):
        super().__init__(input_shape, num_classes, dropout)


class SeedSmallCNN(_VGGStyle):
    """The seed's student, sized to match: a three-stage VGG-style network.

    Stages (conv widths): 32-32 | 64-64 | 128-128-128, each followed by 2x2 max-pooling,
    then global average pooling, Dropout(`dropout`) and Linear(128, num_classes).

    Parameters: exactly 436,458 for 3x32x32 inputs and 10 classes (the seed's ~0.44M:
    -0.8%); 435,882 for 1-channel inputs; the head is 128 * num_classes + num_classes.
    """

    stage_widths = SMALL_STAGES
    default_taps: dict[str, str] = {"stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "embedding": "pool"}

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.1):
        super().__init__(input_shape, num_classes, dropout)
