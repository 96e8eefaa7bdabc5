"""Hinton knowledge distillation (Hinton, Vinyals & Dean 2015).

Default weights follow `distillation_loss`: alpha on the hard-label CE, (1 - alpha) on
T²·KL. `hard_weight` / `soft_weight` replace that pair with two free weights and
`t_squared: false` drops T², which together express the labml recipe
(`soft_weight: 100, hard_weight: 0.5, t_squared: false`) through the same code path.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from kdistill.losses import kd_loss
from kdistill.methods.base import MethodParams, register
from kdistill.methods.logit import LogitMethod


class KDParams(MethodParams):
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.1, ge=0.0, le=1.0, description="weight of the hard-label CE; soft term gets 1 - alpha")
    hard_weight: float | None = Field(None, ge=0.0, description="overrides alpha for the CE term")
    soft_weight: float | None = Field(None, ge=0.0, description="overrides 1 - alpha for the KD term")
    t_squared: bool = True

    @model_validator(mode="after")
    def _both_or_neither(self) -> "KDParams":
        if (self.hard_weight is None) != (self.soft_weight is None):
            raise ValueError("give both hard_weight and soft_weight, or neither (then alpha sets them)")
        return self

    def weights(self) -> tuple[float, float]:
        if self.hard_weight is not None and self.soft_weight is not None:
            return self.hard_weight, self.soft_weight
        return self.alpha, 1.0 - self.alpha


@register
class KD(LogitMethod):
    """{"ce": w_hard · CE, "kd": w_soft · [T²·]KL(p_t^T ‖ p_s^T)}."""

    name = "kd"
    Params = KDParams

    def __init__(self, params: KDParams):
        super().__init__(params)
        self.needs_teacher = params.weights()[1] > 0  # alpha=1 is plain CE: don't pay for teacher passes
        self.learns_from_unlabeled = self.needs_teacher  # ... nor for unlabelled samples it would learn nothing from

    def ce_weight(self) -> float:
        return self.params.weights()[0]

    def distill(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.params
        hard_w, soft_w = p.weights()
        if soft_w <= 0 and hard_w > 0:
            return {}
        return {"kd": soft_w * kd_loss(student_logits, teacher_logits, p.temperature, t_squared=p.t_squared)}
