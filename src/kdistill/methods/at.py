"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): CE + weight · Σ over stage pairs of AT(s, t), no connector.

By default every stage of the student is paired with the teacher's (from the last, as in the
paper, which transfers attention at each group of residual blocks).
"""

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
    kind = "stages"
    term = "at"

    def connect(self, shapes: list[tuple[torch.Size, torch.Size]]) -> None:
        for (s_shape, t_shape), (s_name, t_name) in zip(shapes, self.pairs):
            if len(s_shape) != 4 or len(t_shape) != 4:
                raise KdistillError(
                    f"distill (at): attention transfer needs feature maps (B, C, H, W); student {s_name!r} "
                    f"gives {tuple(s_shape[1:])}, teacher {t_name!r} gives {tuple(t_shape[1:])}")

    def distance(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor, pair: int) -> torch.Tensor:
        return at_loss(student_feature, teacher_feature, self.params.p)
