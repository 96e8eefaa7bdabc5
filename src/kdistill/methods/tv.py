"""Causal-LM distillation by total variation, ½ Σ |teacher − student|, per token (an f-divergence bounded in [0,
1]; Wen et al. 2023)."""

from __future__ import annotations

import torch

from kdistill.losses.tokens import total_variation
from kdistill.methods.base import register
from kdistill.methods.token import TokenMethod


@register
class TotalVariation(TokenMethod):
    name = "tv"

    def divergence(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return total_variation(p, q)
