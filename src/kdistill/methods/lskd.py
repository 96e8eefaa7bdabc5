"""KD with logit standardisation (Sun et al., CVPR 2024): ce_weight · CE + weight · T²·KL on z-scored logits.

Defaults follow the authors' CIFAR recipe on top of KD (CE 0.1, KD 9, T = 2).
"""

from __future__ import annotations

import torch
from pydantic import Field

from kdistill.data.splits import Batch
from kdistill.losses import ls_kd_loss
from kdistill.methods.base import Method, MethodParams, label_term, register


class LSKDParams(MethodParams):
    temperature: float = Field(2.0, gt=0)
    weight: float = Field(9.0, ge=0)
    ce_weight: float = Field(0.1, ge=0)


@register
class LSKD(Method):
    name = "ls_kd"
    Params = LSKDParams

    def forward(self, batch: Batch, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
        p = self.params
        terms = label_term(student_logits, batch.labels, p.ce_weight)
        terms["ls_kd"] = p.weight * ls_kd_loss(student_logits, teacher_logits, p.temperature)
        return terms
