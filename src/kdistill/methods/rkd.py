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

    def feature_terms(self, batch: Batch, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.params
        terms = {}
        if p.distance_weight > 0:
            terms["rkd_distance"] = p.weight * p.distance_weight * rkd_distance_loss(student_feature, teacher_feature)
        if p.angle_weight > 0:
            terms["rkd_angle"] = p.weight * p.angle_weight * rkd_angle_loss(student_feature, teacher_feature)
        return terms
