"""Response-based (logit) distillation losses.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> None:
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            "student and teacher logits must both be (batch, classes); got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    *,
    t_squared: bool = True,
) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch.

    The T² factor (Hinton et al. 2015, section 2) keeps the soft term's gradient magnitude
    roughly independent of T, so changing T does not silently re-weight it against the
    hard-label term. Computed in float32: the result is float32 whatever the
    logits' dtype (bf16 under autocast included). ``t_squared=False`` drops it (the labml recipe, which instead gives the
    soft term a large free weight).
    """
    _check_logits(student_logits, teacher_logits, temperature)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2 if t_squared else kl


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """α · CE(s, y) + (1 − α) · kd_loss(s, t, T): Hinton's objective, α weighting the hard labels."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    hard = F.cross_entropy(student_logits.float(), labels)
    soft = kd_loss(student_logits, teacher_logits, temperature)
    return alpha * hard + (1.0 - alpha) * soft
