"""Causal-LM distillation by reverse KL, KL(student ‖ teacher), per token: mode-seeking (MiniLLM, Gu et al.
2024)."""

from __future__ import annotations

import torch

from kdistill.losses.tokens import reverse_kl
from kdistill.methods.base import register
from kdistill.methods.token import TokenMethod


@register
class ReverseKL(TokenMethod):
    name = "reverse_kl"

    def divergence(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return reverse_kl(p, q)
