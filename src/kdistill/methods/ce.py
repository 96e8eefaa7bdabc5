"""Plain supervised training: cross-entropy on the labels (teachers, students trained alone); for causal LMs,
on the next tokens."""

from __future__ import annotations

import torch
from pydantic import Field

from kdistill.data.splits import Batch
from kdistill.losses.tokens import TokenStates, token_terms
from kdistill.methods.base import Method, MethodParams, labeled_cross_entropy, register


class CEParams(MethodParams):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


@register
class CrossEntropy(Method):
    """{"ce": CE(student, labels)} — no teacher."""

    name = "ce"
    Params = CEParams
    needs_teacher = False
    learns_from_unlabeled = False
    tasks = ("vision", "text", "causal-lm")

    def forward(self, batch: Batch, student_logits: torch.Tensor | TokenStates,
                teacher_logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if isinstance(student_logits, TokenStates):  # a causal LM: the next-token CE, chunk by chunk
            return {"ce": token_terms(student_logits, None, None, label_smoothing=self.params.label_smoothing)[0]}
        return {"ce": labeled_cross_entropy(student_logits, batch, self.params.label_smoothing)}
