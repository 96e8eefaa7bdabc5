"""The base of methods that need nothing but logits: a label term plus the method's own terms.

A logit method runs on every task whose models give logits (images and text alike; causal LMs per
token): it implements `distill(student_logits, teacher_logits, labels)` and `ce_weight()`, and the
base adds the weighted cross-entropy on the labels. A new logit method is one file:

    @register
    class MyKD(LogitMethod):
        name = "my_kd"
        Params = MyParams  # with ce_weight, temperature, weight, ...

        def distill(self, student_logits, teacher_logits, labels):
            return {"my_kd": self.params.weight * my_loss(student_logits, teacher_logits)}
"""

from __future__ import annotations

from typing import ClassVar

import torch

from kdistill.data.splits import Batch
from kdistill.methods.base import Method, label_term


class LogitMethod(Method):
    """{"ce": ce_weight · CE(student, labels), **distill(...)}: see the module docstring. `distill` gets -1 for
    a sample without a single label (unlabelled transfer data, a mixed image)."""

    tasks: ClassVar[tuple[str, ...]] = ("vision", "text")

    def ce_weight(self) -> float:
        """Weight of the hard-label cross-entropy (the `ce_weight` parameter unless the method defines it otherwise)."""
        return float(self.params.ce_weight)

    def distill(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
        raise TypeError(f"{type(self).__name__} must implement distill()")

    def forward(self, batch: Batch, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
        terms = label_term(student_logits, batch, self.ce_weight())
        labels = batch.labels
        if batch.mixed is not None:  # a mixed image has no single label: -1, as an unlabelled sample
            labels = torch.where(batch.mixed[1].to(labels.device) < 1, torch.full_like(labels, -1), labels)
        terms.update(self.distill(student_logits, teacher_logits, labels))
        return terms
