"""Teacher-free KD with a virtual teacher (Yuan et al., "Revisiting Knowledge Distillation via Label
Smoothing Regularization", CVPR 2020, Tf-KD_reg).

The virtual teacher puts `correct_prob` on the true class and spreads the rest evenly:
p_d(k) = a if k = y else (1 − a)/(K − 1). Loss: (1 − α)·CE + α·T²·KL(p_d^T ‖ p_s^T), where
p_d^T softens p_d by using log p_d as its logits. (The authors' code instead divides the
probabilities themselves by T before a softmax, has no T² factor and averages the KL over
all elements rather than per sample, so its published multipliers do not carry over; with
this definition T = 1 is exactly p_d and the term is kd_loss's.) No teacher run is needed.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from kdistill.losses import kd_loss
from kdistill.methods.base import MethodParams, register
from kdistill.methods.logit import LogitMethod


class TFKDParams(MethodParams):
    correct_prob: float = Field(0.9, gt=0.0, lt=1.0, description="the virtual teacher's probability of the true class")
    temperature: float = Field(1.0, gt=0)
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the virtual-teacher term; CE gets 1 - alpha")


def virtual_teacher_logits(labels: torch.Tensor, num_classes: int, correct_prob: float) -> torch.Tensor:
    """log p_d: log a on the true class, log((1 − a)/(K − 1)) elsewhere."""
    rest = math.log((1.0 - correct_prob) / max(1, num_classes - 1))
    logits = torch.full((labels.shape[0], num_classes), rest, device=labels.device)
    return logits.scatter_(1, labels[:, None], math.log(correct_prob))


@register
class TFKD(LogitMethod):
    name = "tf_kd"
    Params = TFKDParams
    needs_teacher = False
    needs_every_label = "builds its virtual teacher from each sample's label"

    def ce_weight(self) -> float:
        return 1.0 - self.params.alpha

    def distill(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.params
        virtual = virtual_teacher_logits(labels, student_logits.shape[-1], p.correct_prob)
        return {"tf_kd": p.alpha * kd_loss(student_logits, virtual, p.temperature)}
