"""Causal-LM distillation by the generalised Jensen-Shannon divergence JSD(β) per token (GKD, Agarwal et al.
2024): β·KL(p ‖ m) + (1 − β)·KL(q ‖ m) with m = β·p + (1 − β)·q; β = 0 is forward KL, β = 1 reverse KL."""

from __future__ import annotations

import torch
from pydantic import Field

from kdistill.losses.tokens import generalized_jsd
from kdistill.methods.base import register
from kdistill.methods.token import TokenMethod, TokenParams


class JSDParams(TokenParams):
    beta: float = Field(0.5, ge=0.0, le=1.0, description="0: forward KL, 1: reverse KL, between: the mixture JSD")


@register
class JSD(TokenMethod):
    name = "jsd"
    Params = JSDParams

    def divergence(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return generalized_jsd(p, q, self.params.beta)
