"""DIST (Huang et al., NeurIPS 2022): CE + weight · DIST (inter- and intra-class Pearson correlation)."""

from __future__ import annotations

import torch
from pydantic import Field

from kdistill.data.splits import Batch
from kdistill.losses import dist_loss
from kdistill.methods.base import Method, MethodParams, label_term, register


class DISTParams(MethodParams):
    beta: float = Field(1.0, ge=0, description="weight of the inter-class (per-sample) relation")
    gamma: float = Field(1.0, ge=0, description="weight of the intra-class (per-class) relation")
    temperature: float = Field(1.0, gt=0)
    weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)


@register
class DIST(Method):
    name = "dist"
    Params = DISTParams

    def forward(self, batch: Batch, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
        p = self.params
        terms = label_term(student_logits, batch.labels, p.ce_weight)
        terms["dist"] = p.weight * dist_loss(student_logits, teacher_logits, p.beta, p.gamma, p.temperature)
        return terms
