"""Relational KD (Park et al., CVPR 2019): CE + weight · (distance_weight · RKD-D + angle_weight · RKD-A) on the embeddings."""

from __future__ import annotations

import torch
from pydantic import Field

from kdistill.data.splits import Batch
from kdistill.losses import rkd_angle_loss, rkd_distance_loss
from kdistill.methods.base import register
from kdistill.methods.tapped import TappedMethod, TappedParams


class RKDParams(TappedParams):
    distance_weight: float = Field(25.0, ge=0)
    angle_weight: float = Field(50.0, ge=0)


@register
class RKD(TappedMethod):
    name = "rkd"
    Params = RKDParams
    kind = "embedding"

    def feature_terms(self, batch: Batch, student_features: list[torch.Tensor],
                      teacher_features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.params
        pairs = list(zip(student_features, teacher_features))
        terms = {}
        if p.distance_weight > 0:
            terms["rkd_distance"] = p.weight * p.distance_weight * sum(rkd_distance_loss(s, t) for s, t in pairs)
        if p.angle_weight > 0:
            terms["rkd_angle"] = p.weight * p.angle_weight * sum(rkd_angle_loss(s, t) for s, t in pairs)
        return terms
