"""Feature- and relation-based distillation losses: intermediate outputs in, scalar (batch mean) out.

Feature losses compare what two networks compute at a layer (after a connector has made
the shapes match); relation losses compare how each network arranges the samples of a
batch relative to each other, so they need no connector at all.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F


def _fp32(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run a loss with autocast off: its matrix products (distances, Gram matrices) need float32,
    which `.float()` alone does not give under a bf16 autocast."""

    @functools.wraps(loss)
    def wrapper(*tensors: torch.Tensor, **kwargs) -> torch.Tensor:
        with torch.autocast(tensors[0].device.type, enabled=False):
            return loss(*tensors, **kwargs)

    return wrapper


def _match_spatial(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two (B, C, H, W) maps down to the other's H x W."""
    if student.dim() == 4 and teacher.dim() == 4 and student.shape[2:] != teacher.shape[2:]:
        size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
        student, teacher = F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size)
    return student, teacher


@_fp32
def fitnet_loss(student_hint: torch.Tensor, teacher_hint: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

    Mean squared error between the regressed student feature and the teacher's (the caller's
    connector maps the student's channels to the teacher's; spatial sizes are matched by
    average pooling).
    """
    student_hint, teacher_hint = _match_spatial(student_hint.float(), teacher_hint.float())
    if student_hint.shape != teacher_hint.shape:
        raise ValueError(f"hint shapes differ: {tuple(student_hint.shape)} vs {tuple(teacher_hint.shape)}")
    return F.mse_loss(student_hint, teacher_hint)


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of a (B, C, H, W) map: mean over channels of |f|^p, flattened, L2-normalised per sample."""
    return F.normalize(feature.float().abs().pow(p).mean(dim=1).flatten(1), dim=1)


@_fp32
def at_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

    mean over batch and positions of (a_s − a_t)², a = attention_map(f, p). The channel count
    may differ (attention averages over channels); spatial sizes are matched by pooling.
    """
    if student_feature.dim() != 4 or teacher_feature.dim() != 4:
        raise ValueError("attention transfer needs (B, C, H, W) feature maps; tap a convolutional stage")
    student_feature, teacher_feature = _match_spatial(student_feature, teacher_feature)
    return (attention_map(student_feature, p) - attention_map(teacher_feature, p)).pow(2).mean()


@_fp32
def pkt_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, "Learning Deep Representations with
    Probabilistic Knowledge Transfer", ECCV 2018).

    Each network's cosine similarities between the batch's samples, mapped to [0, 1] and
    normalised per row into a conditional distribution; the loss is the mean over all pairs of
    q_t · log((q_t + eps) / (q_s + eps)). Features of any width (flattened).
    """
    s = F.normalize(student_embedding.float().flatten(1), dim=1)
    t = F.normalize(teacher_embedding.float().flatten(1), dim=1)
    q_s = (s @ s.t() + 1.0) / 2.0
    q_t = (t @ t.t() + 1.0) / 2.0
    q_s = q_s / q_s.sum(dim=1, keepdim=True)
    q_t = q_t / q_t.sum(dim=1, keepdim=True)
    return (q_t * torch.log((q_t + eps) / (q_s + eps))).mean()


def _pairwise_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances between rows, with a zero diagonal and a gradient that is finite everywhere."""
    square = x.pow(2).sum(dim=1)
    d2 = (square[:, None] + square[None, :] - 2.0 * x @ x.t()).clamp(min=eps)
    off_diagonal = 1.0 - torch.eye(x.shape[0], device=x.device, dtype=x.dtype)
    return d2.sqrt() * off_diagonal


@_fp32
def rkd_distance_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    """RKD distance term (Park et al., "Relational Knowledge Distillation", CVPR 2019).

    Smooth-L1 between the two networks' pairwise distance matrices, each divided by its mean
    off-diagonal distance (so the scale of the embeddings does not matter).
    """
    s = student_embedding.float().flatten(1)
    t = teacher_embedding.float().flatten(1)
    n = s.shape[0]
    mask = ~torch.eye(n, dtype=torch.bool, device=s.device)
    d_s, d_t = _pairwise_distances(s), _pairwise_distances(t)
    d_s = d_s / d_s[mask].mean().clamp(min=1e-12)
    d_t = d_t / d_t[mask].mean().clamp(min=1e-12)
    return F.smooth_l1_loss(d_s, d_t)


@_fp32
def rkd_angle_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    """RKD angle term (Park et al. 2019): Smooth-L1 between cos∠(x_i − x_j, x_k − x_j) over all triplets."""

    def angles(x: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=2)  # diff[j, i] = normalise(x_i - x_j)
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()

    return F.smooth_l1_loss(angles(student_embedding.float().flatten(1)), angles(teacher_embedding.float().flatten(1)))


@_fp32
def sp_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019).

    G = F Fᵀ over the batch's flattened features, each row L2-normalised; the loss is
    ‖G_s − G_t‖²_F / B². Features of any shape and width.
    """
    n = student_feature.shape[0]
    g_s = F.normalize(student_feature.float().reshape(n, -1) @ student_feature.float().reshape(n, -1).t(), dim=1)
    g_t = F.normalize(teacher_feature.float().reshape(n, -1) @ teacher_feature.float().reshape(n, -1).t(), dim=1)
    return (g_s - g_t).pow(2).sum() / (n * n)


@_fp32
def nce_loss(scores: torch.Tensor, num_samples: int, eps: float = 1e-7) -> torch.Tensor:
    """The NCE objective of CRD (Tian et al., "Contrastive Representation Distillation", ICLR 2020, eq. 15-18).

    `scores` (B, K + 1) are normalised exp-similarities, column 0 the positive pair, the other K
    negatives drawn uniformly from `num_samples`; with noise mass m = K / N:
    −mean_b[ log(x₀ / (x₀ + m)) + Σ_k log(m / (x_k + m)) ].
    """
    negatives = scores.shape[1] - 1
    m = negatives / num_samples
    positive = torch.log(scores[:, 0] / (scores[:, 0] + m + eps))
    negative = torch.log(m / (scores[:, 1:] + m + eps)).sum(dim=1)
    return -(positive + negative).mean()
