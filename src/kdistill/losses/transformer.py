"""Losses between two transformer encoders' layers, token by token: hidden states, attention scores and
self-attention relations. Inputs are (B, L, D) tensors (a layer's output, or its query / key / value
projections) and the (B, L) attention mask (1: a real token, 0: padding); padded positions add nothing.
Computed in float32 with autocast off.
"""

from __future__ import annotations

import math

import torch

from kdistill.losses.features import _fp32


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, heads, L, D / heads): the concatenated heads of a projection, one per row."""
    batch, length, width = x.shape
    if width % heads:
        raise ValueError(f"a width of {width} does not split into {heads} heads")
    return x.float().reshape(batch, length, heads, width // heads).transpose(1, 2)


def _pair_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) token mask -> (B, 1, L, L): True where query and key are both real tokens."""
    valid = mask.bool()
    return (valid[:, :, None] & valid[:, None, :])[:, None]


@_fp32
def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real tokens' elements of two (B, L, D) hidden states (TinyBERT's L_hidn and
    L_embd once the student is projected to the teacher's width)."""
    if student.shape != teacher.shape:
        raise ValueError(f"hidden states differ in shape: {tuple(student.shape)} vs {tuple(teacher.shape)}")
    weights = mask.float()[..., None]
    squared = (student.float() - teacher.float()).pow(2) * weights
    return squared.sum() / (weights.sum() * student.shape[-1]).clamp(min=1)


def attention_scores(query: torch.Tensor, key: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, heads, L, L) scaled dot products q·k / sqrt(d_head), before the softmax."""
    q, k = split_heads(query, heads), split_heads(key, heads)
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


@_fp32
def attention_score_mse(student_query: torch.Tensor, student_key: torch.Tensor, teacher_query: torch.Tensor,
                        teacher_key: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """TinyBERT's attention loss (Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding",
    Findings of EMNLP 2020): the mean over heads of MSE(A_s, A_t), A = q·k / sqrt(d) before the softmax,
    over the (query, key) pairs of real tokens. Both models need `heads` heads."""
    student = attention_scores(student_query, student_key, heads)
    teacher = attention_scores(teacher_query, teacher_key, heads)
    pairs = _pair_mask(mask).float()
    return ((student - teacher).pow(2) * pairs).sum() / (pairs.sum() * heads).clamp(min=1)


def _relation_log_probs(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """log softmax over the real keys of a·b / sqrt(d_head), per head: (B, heads, L, L)."""
    scores = attention_scores(a, b, heads)
    keys = mask.bool()[:, None, None, :]
    # A large finite value, not -inf: a padded key gets probability 0 exactly and no inf - inf reaches a gradient.
    return torch.log_softmax(scores.masked_fill(~keys, -1e9), dim=-1)


@_fp32
def relation_kl(student_a: torch.Tensor, student_b: torch.Tensor, teacher_a: torch.Tensor, teacher_b: torch.Tensor,
                mask: torch.Tensor, heads: int) -> torch.Tensor:
    """MiniLM's self-attention relation transfer (Wang et al., "MiniLM: Deep Self-Attention Distillation for
    Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS 2020): KL(R_t ‖ R_s) with
    R = softmax(a·b / sqrt(d_head)) over the real keys, per head and query token, averaged over the heads and
    the real query tokens of the batch. (query, key) gives the attention distributions (L_AT), (value, value)
    the value relation (L_VR). `heads` splits each model's projection into that many relation heads, so the
    widths may differ when both divide (MiniLMv2's relation heads)."""
    student = _relation_log_probs(student_a, student_b, mask, heads)
    teacher = _relation_log_probs(teacher_a, teacher_b, mask, heads)
    pairs = _pair_mask(mask)
    teacher_p = teacher.exp()
    pointwise = torch.where(pairs, teacher_p * (teacher - student), torch.zeros_like(teacher_p))
    queries = mask.float().sum() * heads
    return pointwise.sum() / queries.clamp(min=1)
