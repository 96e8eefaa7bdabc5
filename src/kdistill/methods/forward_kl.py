"""Causal-LM distillation by forward KL, KL(teacher ‖ student), per token (Hinton et al. 2015 applied to next-
token distributions; the loss of DistillKit and of Gemma 2's distilled models)."""

from __future__ import annotations

from kdistill.losses.tokens import forward_kl
from kdistill.methods.base import register
from kdistill.methods.token import TokenMethod


@register
class ForwardKL(TokenMethod):
    name = "forward_kl"

    # The function itself, not a wrapper: token_terms recognises it and takes its closed-form gradient.
    divergence = staticmethod(forward_kl)
