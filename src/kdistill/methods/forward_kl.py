"""Causal-LM distillation by forward KL, KL(teacher ‖ student), per token (Hinton et al. 2015 applied to next-
token distributions; the loss of DistillKit and of Gemma 2's distilled models)."""

from __future__ import annotations

import torch

from kdistill.losses.tokens import forward_kl
from kdistill.methods.base import register
from kdistill.methods.token import TokenMethod


@register
class ForwardKL(TokenMethod):
    name = "forward_kl"

    def divergence(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return forward_kl(p, q)
