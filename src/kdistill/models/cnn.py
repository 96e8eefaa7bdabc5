"""A small configurable convolutional network for (C, H, W) images."""

from __future__ import annotations

import torch
from torch import nn


class CNN(nn.Module):
    """Stages of [Conv3x3 -> BatchNorm -> ReLU] x convs_per_stage -> MaxPool(2), then a linear head.

    `channels` gives one stage per entry; a stage only pools while the feature map is at
    least 2 pixels wide, so the same network runs on 8x8 digits and 32x32 CIFAR.

    `default_taps` names stage i's output `stages.<i-1>` and the pooled embedding `pool`; the
    class attribute is for the default two stages, each instance holds its own.
    """

    default_taps: dict[str, str] = {"stage1": "stages.0", "stage2": "stages.1", "embedding": "pool"}

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: list[int] = (32, 64),
        convs_per_stage: int = 1,
        hidden: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs image inputs (C, H, W), got {tuple(input_shape)}")
        in_ch, h, _ = input_shape
        stages = []
        for out_ch in channels:
            layers: list[nn.Module] = []
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(in_ch, int(out_ch), 3, padding=1, bias=False), nn.BatchNorm2d(int(out_ch)), nn.ReLU(inplace=True)]
                in_ch = int(out_ch)
            if h >= 2:
                layers.append(nn.MaxPool2d(2))
                h //= 2
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.default_taps = {**{f"stage{i + 1}": f"stages.{i}" for i in range(len(stages))}, "embedding": "pool"}
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        head: list[nn.Module] = []
        width = in_ch
        if hidden:
            head += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.stages(x)))
