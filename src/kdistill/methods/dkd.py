"""Decoupled KD (Zhao et al., CVPR 2022): CE + warm-up · DKD(α·TCKD + β·NCKD, T²).

On unlabelled samples (transfer data) the target class is the teacher's top class. As in the paper, the DKD term is ramped up linearly over the first `warmup_epochs`
(factor min((epoch + 1) / warmup_epochs, 1); the paper uses 20 of 240 epochs). For short
runs lower it, or set 0 to disable.
"""

from __future__ import annotations

import torch
from pydantic import Field

from kdistill.losses import dkd_loss
from kdistill.methods.base import MethodParams, register
from kdistill.methods.logit import LogitMethod


class DKDParams(MethodParams):
    alpha: float = Field(1.0, ge=0, description="weight of TCKD (target-class KD)")
    beta: float = Field(8.0, ge=0, description="weight of NCKD (non-target-class KD)")
    temperature: float = Field(4.0, gt=0)
    ce_weight: float = Field(1.0, ge=0)
    warmup_epochs: int = Field(20, ge=0)


@register
class DKD(LogitMethod):
    name = "dkd"
    Params = DKDParams

    def __init__(self, params: DKDParams):
        super().__init__(params)
        self.ramp = 1.0

    def start_epoch(self, epoch: int, epochs: int) -> None:
        w = self.params.warmup_epochs
        self.ramp = min((epoch + 1) / w, 1.0) if w else 1.0

    def distill(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.params
        if bool((labels < 0).any()):  # unlabelled transfer data: the teacher's class is the target class
            labels = torch.where(labels >= 0, labels, teacher_logits.argmax(-1))
        return {"dkd": self.ramp * dkd_loss(student_logits, teacher_logits, labels, p.alpha, p.beta, p.temperature)}
