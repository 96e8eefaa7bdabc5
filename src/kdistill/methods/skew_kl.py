"""Causal-LM distillation by DistiLLM's skew divergences (Ko et al., ICML 2024): skew KL, KL(p ‖ α·p + (1 − α)·q),
and skew reverse KL, KL(q ‖ α·q + (1 − α)·p), per token; the skew α keeps the loss and its gradient bounded
where the student puts almost no mass. One file, two methods: they differ only in direction."""

from __future__ import annotations

import torch
from pydantic import Field

from kdistill.losses.tokens import skew_kl, skew_reverse_kl
from kdistill.methods.base import register
from kdistill.methods.token import TokenMethod, TokenParams


class SkewParams(TokenParams):
    skew: float = Field(0.1, ge=0.0, lt=1.0, description="share of the target's own distribution in the mixture (DistiLLM: 0.1)")


@register
class SkewKL(TokenMethod):
    name = "skew_kl"
    Params = SkewParams

    def divergence(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return skew_kl(p, q, self.params.skew)


@register
class SkewReverseKL(TokenMethod):
    name = "skew_reverse_kl"
    Params = SkewParams

    def divergence(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return skew_reverse_kl(p, q, self.params.skew)
