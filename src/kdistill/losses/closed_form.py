"""Next-token cross-entropy and forward KL with their gradient in closed form, one chunk of tokens at a time:
the fast path of `kdistill.losses.tokens.token_terms`.

Autograd through log-softmax, the top-k gather and the tail bin's masked log-sum-exp keeps several
(tokens × vocabulary) tables per chunk, and activation checkpointing makes them all twice. For the CE and
forward KL, the gradient with respect to the student's logits z has a closed form. So `ClosedFormChunk` finds
the two sums without a graph. In backward it recomputes the chunk's logits once, writes the gradient over
them in place, and multiplies it into the hidden states and the head:

    d CE / d z       = s − (1 − ε)·onehot(y) − ε / V                           s = softmax(z), ε: label smoothing
    d KL_bins / d z  = (1 / T)·( s_T·(P − r·[j in the tail]) − p_T,j·[j in the teacher's tokens] )

Here s_T = softmax(z / T). The bins are the teacher's k tokens plus one tail bin (`TopK`), or every token (a
dense teacher; then there is no tail). P = Σ_bins p_T is 1 up to the teacher's rounding. r = p_tail / q_tail
is the teacher's tail mass over the student's. The sums are those of the autograd path. tests/test_losses_tokens.py
checks values and gradients against explicit loops and against autograd over the k + 1 bins.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from kdistill.losses.token_sides import TeacherHidden, TopK, _kl, _up


def _logits(hidden: torch.Tensor, head: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _up(F.linear(hidden, head, bias))


class ClosedFormChunk(torch.autograd.Function):
    """[Σ CE, Σ forward KL] over one chunk's tokens; gradients for the hidden states, head and bias only.

    `teacher` is None (CE alone), or the chunk's rows of a `TopK` or `TeacherHidden`, its log-probabilities
    taken at `temperature`."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, head: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                teacher: TopK | TeacherHidden | None, temperature: float, smoothing: float) -> torch.Tensor:
        device = hidden.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.teacher, ctx.temperature, ctx.smoothing = teacher, temperature, smoothing
        z = _logits(hidden, head, bias)
        lse = torch.logsumexp(z, dim=-1)
        ce = lse - z.gather(-1, labels[:, None])[:, 0]
        if smoothing:
            ce = (1.0 - smoothing) * ce + smoothing * (lse - z.mean(-1))
        kl = torch.zeros((), dtype=z.dtype, device=z.device)
        lse_t = log_tail = None
        if teacher is not None:
            zt = z if temperature == 1.0 else z / temperature
            lse_t = lse if temperature == 1.0 else torch.logsumexp(zt, dim=-1)
            if isinstance(teacher, TopK):
                ids = teacher.ids.long()
                kl = _kl(_up(teacher.logprobs), zt.gather(-1, ids) - lse_t[:, None]).sum()
                if ids.shape[-1] < z.shape[-1]:  # the tail bin: every token outside the teacher's k, in log space
                    log_tail = torch.logsumexp(zt.scatter_(-1, ids, -math.inf), dim=-1) - lse_t  # zt may be z: last use
                    kl = kl + _kl(_up(teacher.tail_logmass)[:, None], log_tail[:, None]).sum()
            else:
                kl = _kl(teacher.logprobs(slice(None), temperature), zt - lse_t[:, None]).sum()
        ctx.save_for_backward(hidden, head, bias, labels, lse, lse_t, log_tail)
        return torch.stack([ce.sum(), kl])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        hidden, head, bias, labels, lse, lse_t, log_tail = ctx.saved_tensors
        teacher, temperature, smoothing = ctx.teacher, ctx.temperature, ctx.smoothing
        enabled, dtype = ctx.autocast
        with torch.autocast(hidden.device.type, dtype=dtype, enabled=enabled):
            z = _logits(hidden, head, bias)
        g_ce, g_kl = grad[0].to(z.dtype), grad[1].to(z.dtype)
        s_t = None
        if teacher is not None and temperature != 1.0:
            s_t = (z / temperature).sub_(lse_t[:, None]).exp_()
        g = z.sub_(lse[:, None]).exp_()  # softmax(z), in the logits' memory
        if teacher is None:
            g.mul_(g_ce)
        elif s_t is None:  # T = 1: one softmax serves both terms
            _kl_gradient(g, teacher, temperature, log_tail, g_kl / temperature, g_ce)
        else:
            _kl_gradient(s_t, teacher, temperature, log_tail, g_kl / temperature, torch.zeros_like(g_ce))
            g.mul_(g_ce).add_(s_t)
        n = labels.shape[0]
        g.scatter_add_(-1, labels[:, None], (-g_ce * (1.0 - smoothing)).expand(n, 1).contiguous())
        if smoothing:
            g.sub_(g_ce * smoothing / g.shape[-1])
        grad_hidden = (g.to(head.dtype) @ head).to(hidden.dtype) if ctx.needs_input_grad[0] else None
        grad_head = (g.T.to(hidden.dtype) @ hidden).to(head.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = g.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_hidden, grad_head, grad_bias, None, None, None, None


def _kl_gradient(s_t: torch.Tensor, teacher: TopK | TeacherHidden, temperature: float, log_tail: torch.Tensor | None,
                 c: torch.Tensor, base: torch.Tensor) -> None:
    """Turn s_t = softmax(z / T) into base·s_t + c·T·d KL / d z, in place (base > 0 when s_t is also the CE's
    softmax, at T = 1)."""
    if isinstance(teacher, TeacherHidden):
        p = teacher.logprobs(slice(None), temperature).exp()
        s_t.mul_((base + c * p.sum(-1))[:, None]).sub_(c * p)
        return
    ids, tail = teacher.ids.long(), _up(teacher.tail_logmass)
    p = _up(teacher.logprobs).exp().to(s_t.dtype)  # summed in the logits' precision, as autograd sums the terms
    mass = p.sum(-1)
    kept = s_t.gather(-1, ids)
    outside = base + c * mass
    if log_tail is not None:
        p_tail = tail.exp().to(s_t.dtype)
        mass = mass + p_tail
        ratio = torch.where(p_tail > 0, (tail - log_tail).exp(), torch.zeros_like(p_tail))
        outside = base + c * (mass - ratio)
    s_t.mul_(outside[:, None])
    s_t.scatter_(-1, ids, kept * (base + c * mass)[:, None] - c * p)


def closed_form_sums(hidden: torch.Tensor, head: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                     teacher: TopK | TeacherHidden | None, temperature: float, smoothing: float) -> torch.Tensor:
    """[Σ CE, Σ forward KL] of one chunk, differentiable with respect to hidden, head and bias."""
    return ClosedFormChunk.apply(hidden, head, bias, labels, teacher, temperature, smoothing)
