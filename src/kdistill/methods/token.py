"""The base of causal-LM methods: next-token cross-entropy mixed by `alpha` with one per-token divergence.

A token method receives the student's `TokenStates` (final hidden states at the scored positions and the
output head) and the teacher's tokens (`TeacherHidden` from a live teacher, or `TopK` from the offline
cache), and returns {"ce": alpha · CE, name: (1 − alpha) · T² · divergence}, both means over the scored
tokens, computed in bounded chunks by `kdistill.losses.tokens.token_terms`. On continuations the student
sampled itself (on-policy batches, `TokenStates.labeled` False) there is no label term: CE on one's own
samples has an expected gradient of zero at temperature 1 and sharpens the student toward its own guesses at
any other, so the divergence alone, at its (1 − alpha) weight, is the loss (GKD's on-policy objective). A new
divergence is one file:

    @register
    class MyDivergence(TokenMethod):
        name = "my_divergence"

        def divergence(self, p, q):  # teacher and student log-probabilities (tokens, bins)
            return my_per_token_value(p, q)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from kdistill.losses.tokens import TokenStates, token_terms
from kdistill.methods.base import Method, MethodParams


class TokenParams(MethodParams):
    temperature: float = Field(1.0, gt=0, description="softmax temperature of both distributions")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the next-token CE; the divergence gets 1 - alpha")
    t_squared: bool = Field(True, description="scale the divergence by T^2 (Hinton et al.), so its gradient keeps its size as T changes")


class TokenMethod(Method):
    """See the module docstring; subclasses give `divergence(p, q)`."""

    Params: ClassVar[type[MethodParams]] = TokenParams
    tasks: ClassVar[tuple[str, ...]] = ("causal-lm",)

    def __init__(self, params: TokenParams):
        super().__init__(params)
        self.needs_teacher = params.alpha < 1.0  # alpha 1 is the CE alone: no teacher pass

    def divergence(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must implement divergence()")

    def forward(self, batch: Any, student_logits: TokenStates, teacher_logits: Any) -> dict[str, torch.Tensor]:
        p = self.params
        ce, value = token_terms(student_logits, teacher_logits if self.needs_teacher else None, self.divergence,
                                temperature=p.temperature)
        terms = {"ce": p.alpha * ce} if p.alpha > 0 and student_logits.labeled else {}
        if self.needs_teacher:
            terms[self.name] = (1.0 - p.alpha) * (p.temperature ** 2 if p.t_squared else 1.0) * value
        return terms
