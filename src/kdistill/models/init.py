"""Weight initialisation shared by the ResNet-style zoo models (He et al. 2015)."""

from __future__ import annotations

from torch import nn


def kaiming_init(model: nn.Module, *, zero_linear_bias: bool = False) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions, unit-scale/zero-shift BatchNorm, optionally zero Linear biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif zero_linear_bias and isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
