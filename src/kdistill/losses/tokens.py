"""Token-level distillation losses for causal language models, computed in bounded chunks of tokens.

Every divergence takes two (tokens, bins) tables of log-probabilities, the teacher's `p` and the
student's `q`, and returns one value per token. A bin is a vocabulary entry (dense teacher) or, for a
teacher stored as its top-k (`TopK`), one of its k tokens plus one *tail* bin holding all the mass
outside them, so the tail is counted, not dropped or spread. With k = vocabulary the tail is empty and
the top-k loss is the dense loss; with k < vocabulary it is the exact divergence of the two distributions
coarse-grained to k + 1 bins (a lower bound of the dense one, by the data-processing inequality).
Reading top-k log-probabilities as a whole distribution (renormalising them) is not that: see
`tests/test_losses_tokens.py`.

- forward KL, KL(p ‖ q) (Hinton et al. 2015, per token: the usual sequence-level KD of Kim & Rush 2016
  is its sampled form);
- reverse KL, KL(q ‖ p) (MiniLLM, Gu et al. 2024);
- generalised JSD(β) = β·KL(p ‖ m) + (1 − β)·KL(q ‖ m), m = β·p + (1 − β)·q, with β = 0 defined as forward
  KL and β = 1 as reverse KL (GKD, Agarwal et al. 2024, and TRL's `generalized_jsd_loss`; the mixture form
  itself goes to 0 at both ends, so the ends are the KLs by definition, not by continuity);
- skew KL, KL(p ‖ α·p + (1 − α)·q), and skew reverse KL, KL(q ‖ α·q + (1 − α)·p) (DistiLLM, Ko et al. 2024);
- total variation, ½·Σ|p − q| (e.g. Wen et al. 2023, f-divergence KD).

`token_terms` computes the next-token cross-entropy and one divergence from the student's final hidden
states and output head, `chunk` tokens at a time under activation checkpointing: the forward pass holds
one chunk's (chunk × vocabulary) logits, and the backward pass recomputes them chunk by chunk, so memory
is bounded by the chunk, not by batch × length × vocabulary. The CE alone and forward KL skip the
checkpointed graph: their gradient has a closed form (kdistill.losses.closed_form), which is faster.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kdistill.losses.closed_form import closed_form_sums
from kdistill.losses.token_sides import TeacherHidden, TokenStates, TopK, _kl, _up

__all__ = ["TeacherHidden", "TokenStates", "TopK", "binned", "forward_kl", "generalized_jsd", "reverse_kl", "skew_kl",
           "skew_reverse_kl", "token_terms", "top_k_of", "total_variation"]

Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mix(a: torch.Tensor, b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w · A + (1 − w) · B) from log-probabilities."""
    return torch.logsumexp(torch.stack([a + math.log(weight_a), b + math.log1p(-weight_a)]), dim=0)


def forward_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per token: mass-covering (the student spreads over every mode of the teacher)."""
    return _kl(p, q)


def reverse_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ p) per token: mode-seeking."""
    return _kl(q, p)


def generalized_jsd(p: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
    """GKD's JSD(β) per token; β = 0 is forward KL, β = 1 reverse KL (see the module docstring)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return _kl(p, q)
    if beta == 1.0:
        return _kl(q, p)
    m = _mix(p, q, beta)
    return beta * _kl(p, m) + (1.0 - beta) * _kl(q, m)


def skew_kl(p: torch.Tensor, q: torch.Tensor, skew: float) -> torch.Tensor:
    """DistiLLM's skew KL, KL(p ‖ skew·p + (1 − skew)·q), per token; skew = 0 is forward KL."""
    if not 0.0 <= skew < 1.0:
        raise ValueError(f"skew must be in [0, 1), got {skew}")
    return _kl(p, q if skew == 0.0 else _mix(p, q, skew))


def skew_reverse_kl(p: torch.Tensor, q: torch.Tensor, skew: float) -> torch.Tensor:
    """DistiLLM's skew reverse KL, KL(q ‖ skew·q + (1 − skew)·p), per token; skew = 0 is reverse KL."""
    if not 0.0 <= skew < 1.0:
        raise ValueError(f"skew must be in [0, 1), got {skew}")
    return _kl(q, p if skew == 0.0 else _mix(q, p, skew))


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """½ Σ |p − q| per token, in [0, 1]."""
    return 0.5 * (p.exp() - q.exp()).abs().sum(-1)


def top_k_of(logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopK:
    """The top-k form of dense logits (N, V) at `temperature`; k = V keeps every token (empty tail)."""
    logprobs = torch.log_softmax(_up(logits) / temperature, dim=-1)
    values, ids = logprobs.topk(k, dim=-1)
    if k == logits.shape[-1]:
        tail = torch.full(values.shape[:-1], -math.inf, dtype=values.dtype)
    else:
        tail = torch.logsumexp(logprobs.scatter(-1, ids, -math.inf), dim=-1)
    return TopK(values, ids, tail.to(values.device), temperature)


def binned(student_logprobs: torch.Tensor, teacher: TopK) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probabilities (N, k[+1]) over the teacher's k tokens and, when k is smaller
    than the vocabulary, the tail bin (everything else)."""
    p = _up(teacher.logprobs)
    q = student_logprobs.gather(-1, teacher.ids.long())
    if teacher.ids.shape[-1] == student_logprobs.shape[-1]:  # every token kept: no tail bin
        return p, q
    q_tail = torch.logsumexp(student_logprobs.scatter(-1, teacher.ids.long(), -math.inf), dim=-1)
    return torch.cat([p, _up(teacher.tail_logmass)[:, None]], -1), torch.cat([q, q_tail[:, None]], -1)


def _chunk_sums(student: TokenStates, teacher: TopK | TeacherHidden | None, divergence: Divergence | None,
                temperature: float, label_smoothing: float, index: slice, hidden: torch.Tensor,
                head: torch.Tensor) -> torch.Tensor:
    """[Σ CE, Σ divergence] over the tokens of one chunk."""
    logits = _up(F.linear(hidden, head, student.head_bias))
    logprobs = torch.log_softmax(logits, dim=-1)
    ce = F.cross_entropy(logprobs, student.labels[index], reduction="sum", label_smoothing=label_smoothing)
    if divergence is None or teacher is None:
        return torch.stack([ce, torch.zeros((), dtype=ce.dtype, device=ce.device)])
    q_all = logprobs if temperature == 1.0 else torch.log_softmax(logits / temperature, dim=-1)
    if isinstance(teacher, TopK):
        p, q = binned(q_all, teacher.rows(index))
    else:
        p = teacher.logprobs(index, temperature)
        q = q_all
    return torch.stack([ce, divergence(p, q).sum()])


def token_terms(student: TokenStates, teacher: TopK | TeacherHidden | None, divergence: Divergence | None, *,
                temperature: float = 1.0, label_smoothing: float = 0.0,
                closed_form: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean next-token CE, mean divergence) over the student's scored tokens, chunk by chunk (module
    docstring); the divergence is 0 without a teacher or a divergence. Not scaled by T² here.

    The CE alone and forward KL take the closed-form gradient of kdistill.losses.closed_form (`closed_form`
    False: autograd under checkpointing, as every other divergence)."""
    if isinstance(teacher, TopK) and divergence is not None and teacher.temperature != temperature:
        raise ValueError(f"the teacher's top-k was taken at temperature {teacher.temperature}, the loss uses {temperature}")
    if student.tokens == 0:  # no scored token: a zero with a graph through every student input, so backward runs
        zero = student.hidden.sum() * 0.0 + student.head.sum() * 0.0
        if student.head_bias is not None:
            zero = zero + student.head_bias.sum() * 0.0
        return zero, zero
    if divergence is None:
        teacher = None
    fast = closed_form and (teacher is None or divergence is forward_kl)
    sums = []
    for start in range(0, student.tokens, student.chunk):
        index = slice(start, min(start + student.chunk, student.tokens))
        if fast:
            sums.append(closed_form_sums(student.hidden[index], student.head, student.head_bias, student.labels[index],
                                         None if teacher is None else teacher.rows(index), temperature, label_smoothing))
            continue
        fn = lambda h, w, index=index: _chunk_sums(student, teacher, divergence, temperature, label_smoothing, index, h, w)
        if torch.is_grad_enabled() and (student.hidden.requires_grad or student.head.requires_grad):
            sums.append(checkpoint(fn, student.hidden[index], student.head, use_reentrant=False))
        else:
            sums.append(fn(student.hidden[index], student.head))
    total = torch.stack(sums).sum(0) / student.tokens
    return total[0], total[1]
