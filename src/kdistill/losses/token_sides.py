"""The two sides of a causal-LM token loss, as `kdistill.losses.tokens` and `kdistill.losses.closed_form` take
them: the student's scored positions (`TokenStates`), a live teacher's hidden states (`TeacherHidden`) or a
cached teacher's top-k (`TopK`); and the log-space helpers both loss paths compute with."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(A ‖ B) per row from log-probabilities; bins where A has no mass add 0 (0 · log 0 = 0)."""
    term = torch.where(a > -math.inf, a.exp() * (a - b), torch.zeros((), dtype=a.dtype, device=a.device))
    return term.sum(-1)


def _up(t: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision inputs; float64 stays float64 (the tests compute in it)."""
    return t if t.dtype == torch.float64 else t.float()


@dataclass
class TopK:
    """A teacher's next-token distribution kept as its k most likely tokens: log-probabilities (N, k),
    token ids (N, k) and the log of the mass left outside them (N,), all at `temperature` (the loss must use
    the same one: the tail's mass at another temperature cannot be recovered from it)."""

    logprobs: torch.Tensor
    ids: torch.Tensor
    tail_logmass: torch.Tensor
    temperature: float = 1.0

    def rows(self, index: torch.Tensor | slice) -> "TopK":
        return TopK(self.logprobs[index], self.ids[index], self.tail_logmass[index], self.temperature)


@dataclass
class TeacherHidden:
    """A live teacher's final hidden states (N, d) at the positions being scored and its output head: the
    teacher's logits are made chunk by chunk, never for all tokens at once. Constants (no graph)."""

    hidden: torch.Tensor
    head: torch.Tensor
    head_bias: torch.Tensor | None = None

    def logits(self, index: slice) -> torch.Tensor:
        return F.linear(self.hidden[index], self.head, self.head_bias)

    def logprobs(self, index: slice, temperature: float) -> torch.Tensor:
        """log softmax(logits / T) of the tokens `index`, in float32 (float64 stays float64)."""
        return torch.log_softmax(_up(self.logits(index)) / temperature, dim=-1)

    def rows(self, index: slice) -> "TeacherHidden":
        return TeacherHidden(self.hidden[index], self.head, self.head_bias)


@dataclass
class TokenStates:
    """The student's side of a causal-LM loss, at the N positions that are scored (their next token is a
    label): final hidden states (N, d) with their graph, the output head's weight (V, d) and bias, the
    next tokens (N,), and the chunk size (tokens per piece of the loss). `labeled` is False when the next tokens
    are the student's own samples (on-policy continuations): they are positions to score, not targets, so a
    method adds no label term for them."""

    hidden: torch.Tensor
    head: torch.Tensor
    labels: torch.Tensor
    head_bias: torch.Tensor | None = None
    chunk: int = 1024
    labeled: bool = True

    @property
    def tokens(self) -> int:
        return int(self.labels.shape[0])
