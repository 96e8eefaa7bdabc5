"""DIST (Huang et al., NeurIPS 2022): CE + weight · DIST (inter- and intra-class Pearson correlation)."""

from __future__ import annotations

import torch
from pydantic import Field

from kdistill.losses import dist_loss
from kdistill.methods.base import MethodParams, register
from kdistill.methods.logit import LogitMethod


class DISTParams(MethodParams):
    beta: float = Field(1.0, ge=0, description="weight of the inter-class (per-sample) relation")
    gamma: float = Field(1.0, ge=0, description="weight of the intra-class (per-class) relation")
    temperature: float = Field(1.0, gt=0)
    weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)


@register
class DIST(LogitMethod):
    name = "dist"
    Params = DISTParams

    def distill(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.params
        return {"dist": p.weight * dist_loss(student_logits, teacher_logits, p.beta, p.gamma, p.temperature)}
