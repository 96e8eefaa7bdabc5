"""KD with logit standardisation (Sun et al., CVPR 2024): ce_weight · CE + weight · T²·KL on z-scored logits.

Defaults follow the authors' CIFAR recipe on top of KD (CE 0.1, KD 9, T = 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdistill.data.splits import Batch
from kdistill.losses import ls_kd_loss
from kdistill.methods.base import Method, MethodParams, register


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
        terms = {}
        if p.ce_weight > 0:
            terms["ce"] = p.ce_weight * F.cross_entropy(student_logits.float(), batch.labels)
        terms["ls_kd"] = p.weight * ls_kd_loss(student_logits, teacher_logits, p.temperature)
        return terms
