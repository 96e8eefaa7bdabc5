"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): CE + weight · PKT on the embeddings."""

from __future__ import annotations

import torch
from pydantic import Field

from kdistill.losses import pkt_loss
from kdistill.methods.base import register
from kdistill.methods.tapped import TappedMethod, TappedParams


class PKTParams(TappedParams):
    weight: float = Field(30000.0, ge=0)


@register
class PKT(TappedMethod):
    name = "pkt"
    Params = PKTParams
    kind = "embedding"
    term = "pkt"

    def distance(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor, pair: int) -> torch.Tensor:
        return pkt_loss(student_feature, teacher_feature)
