"""KD with logit standardisation (Sun et al., CVPR 2024): ce_weight · CE + weight · T²·KL on z-scored logits.

Defaults follow the authors' CIFAR recipe on top of KD (CE 0.1, KD 9, T = 2).
"""

from __future__ import annotations

import torch
from pydantic import Field

from kdistill.losses import ls_kd_loss
from kdistill.methods.base import MethodParams, register
from kdistill.methods.logit import LogitMethod


class LSKDParams(MethodParams):
    temperature: float = Field(2.0, gt=0)
    weight: float = Field(9.0, ge=0)
    ce_weight: float = Field(0.1, ge=0)


@register
class LSKD(LogitMethod):
    name = "ls_kd"
    Params = LSKDParams

    def distill(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.params
        return {"ls_kd": p.weight * ls_kd_loss(student_logits, teacher_logits, p.temperature)}
