"""Similarity-preserving KD (Tung & Mori, ICCV 2019): CE + weight · SP of the batch similarity matrices."""

from __future__ import annotations

import torch
from pydantic import Field

from kdistill.losses import sp_loss
from kdistill.methods.base import register
from kdistill.methods.tapped import TappedMethod, TappedParams


class SPParams(TappedParams):
    weight: float = Field(3000.0, ge=0)


@register
class SP(TappedMethod):
    name = "sp"
    Params = SPParams
    kind = "feature"
    term = "sp"

    def distance(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor, pair: int) -> torch.Tensor:
        return sp_loss(student_feature, teacher_feature)
