"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): CE + weight · AT(s, t), no connector."""

from __future__ import annotations

import torch
from pydantic import Field

from kdistill.errors import KdistillError
from kdistill.losses import at_loss
from kdistill.methods.base import register
from kdistill.methods.tapped import TappedMethod, TappedParams


class ATParams(TappedParams):
    weight: float = Field(1000.0, ge=0)
    p: float = Field(2.0, gt=0, description="exponent of the attention map |f|^p")


@register
class AT(TappedMethod):
    name = "at"
    Params = ATParams
    kind = "feature"
    term = "at"

    def connect(self, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        if len(student_shape) != 4 or len(teacher_shape) != 4:
            raise KdistillError(
                f"distill (at): attention transfer needs feature maps (B, C, H, W); student {self.student_module!r} "
                f"gives {tuple(student_shape[1:])}, teacher {self.teacher_module!r} gives {tuple(teacher_shape[1:])}")

    def distance(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        return at_loss(student_feature, teacher_feature, self.params.p)
