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


def _two_class(logits: torch.Tensor) -> torch.Tensor:
    """A single-logit binary model (B, 1) as two logits [0, z]: softmax([0, z])[1] = sigmoid(z)."""
    return torch.cat([torch.zeros_like(logits), logits], dim=-1) if logits.shape[-1] == 1 else logits


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022): α·TCKD + β·NCKD, each × T².

    TCKD is the KL between the binary distributions (target class, all others) of teacher
    and student; NCKD the KL between their distributions over the non-target classes only.
    Both are batch means of softened (T) distributions. Computed from log-probabilities
    (log-sum-exp), not from probabilities, so a confident model (p_target → 1) or a 2-class
    problem (NCKD over a single class is exactly 0) gives no inf/NaN. A (B, 1) single-logit
    binary model is read as logits [0, z]. The paper's warm-up (the loss ramped up over the
    first epochs) is applied by the `dkd` method, not here.
    """
    student_logits, teacher_logits = _two_class(student_logits), _two_class(teacher_logits)
    _check_logits(student_logits, teacher_logits, temperature)
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    gt = F.one_hot(labels, s.shape[-1]).bool()

    def binary_log_probs(z: torch.Tensor) -> torch.Tensor:
        total = torch.logsumexp(z, dim=-1)
        target = z[gt] - total
        others = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=-1) - total
        return torch.stack([target, others], dim=-1)

    tckd = F.kl_div(binary_log_probs(s), binary_log_probs(t), reduction="batchmean", log_target=True)
    n, c = s.shape
    if c > 2:
        s_rest = s[~gt].view(n, c - 1)
        t_rest = t[~gt].view(n, c - 1)
        nckd = F.kl_div(F.log_softmax(s_rest, dim=-1), F.log_softmax(t_rest, dim=-1), reduction="batchmean", log_target=True)
    else:
        nckd = s.sum() * 0.0  # one non-target class: its distribution is the constant 1
    return (alpha * tckd + beta * nckd) * temperature**2


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return F.cosine_similarity(a, b, dim=dim, eps=eps)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022).

    T² · [β · (1 − mean_i ρ(p_s[i, :], p_t[i, :])) + γ · (1 − mean_c ρ(p_s[:, c], p_t[:, c]))]
    with p = softmax(logits / T) and ρ the Pearson correlation: the first (inter-class) term
    compares each sample's class ranking, the second (intra-class) each class's profile
    across the batch. Correlation, not KL, so a student need not match the teacher's scale.
    A constant vector has correlation 0 here (cosine of a zero vector, with eps), not NaN.
    """
    student_logits, teacher_logits = _two_class(student_logits), _two_class(teacher_logits)
    _check_logits(student_logits, teacher_logits, temperature)
    p_s = F.softmax(student_logits.float() / temperature, dim=-1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    inter = 1.0 - _pearson(p_s, p_t, dim=1).mean()
    intra = 1.0 - _pearson(p_s, p_t, dim=0).mean()
    return (beta * inter + gamma * intra) * temperature**2


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """z-score each row: (z − mean) / (std + eps), std Bessel-corrected as in the authors' code."""
    logits = logits.float()
    return (logits - logits.mean(dim=-1, keepdim=True)) / (logits.std(dim=-1, keepdim=True) + eps)


def ls_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """KD on standardised logits (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024).

    T² · KL(softmax(Z(t)/T) ‖ softmax(Z(s)/T)) with Z the per-sample z-score: the student
    matches the teacher's logit *shape*, not its scale or shift. A row of equal logits
    standardises to zeros (eps), the uniform distribution, not NaN.
    """
    student_logits, teacher_logits = _two_class(student_logits), _two_class(teacher_logits)
    _check_logits(student_logits, teacher_logits, temperature)
    return kd_loss(standardize_logits(student_logits), standardize_logits(teacher_logits), temperature)
