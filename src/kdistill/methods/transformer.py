"""The base of text feature methods: hook a Hugging Face encoder student's and teacher's layers, compare them
token by token (TinyBERT, MiniLM).

`bind` finds both models' layers (`kdistill.methods.taps.transformer_layout`) and hooks the modules the subclass
names in `modules_to_read`; `forward` gives the label term plus `feature_terms(mask)`, where `student(name)` and
`teacher(name)` read the last forward pass's outputs and `mask` is the batch's attention mask. Teacher and
student must share a tokenizer (the runner checks): positions are compared one to one.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from kdistill.data.splits import Batch
from kdistill.errors import KdistillError
from kdistill.methods.base import Method, MethodParams, label_term
from kdistill.methods.taps import FeatureTaps, TransformerLayout, transformer_layout


class TransformerParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="weight of the hard-label cross-entropy")


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """TinyBERT's uniform strategy: student layer m (1-based) learns from teacher layer m · N_t / N_s; 0-based here."""
    return [(m + 1) * teacher_layers // student_layers - 1 for m in range(student_layers)]


class TransformerMethod(Method):
    """A method reading two Hugging Face encoders' layers through forward hooks."""

    tasks: ClassVar[tuple[str, ...]] = ("text",)
    reads_teacher_features = True

    def __init__(self, params: TransformerParams):
        super().__init__(params)
        self._student_taps: FeatureTaps | None = None
        self._teacher_taps: FeatureTaps | None = None

    def bind(self, student: nn.Module, teacher: nn.Module | None, example: object = None, num_samples: int = 0) -> None:
        if teacher is None:
            raise KdistillError(f"distill.method {self.name!r} needs a teacher")
        where = f"distill ({self.name})"
        s_layout = transformer_layout(student, f"{where} student")
        t_layout = transformer_layout(teacher, f"{where} teacher")
        student_names, teacher_names = self.modules_to_read(s_layout, t_layout)
        self.unbind()
        self._student_taps = FeatureTaps(student, student_names)
        self._teacher_taps = FeatureTaps(teacher, teacher_names)

    def modules_to_read(self, student: TransformerLayout, teacher: TransformerLayout) -> tuple[list[str], list[str]]:
        """The student's and the teacher's modules to hook; build connectors here (before the optimiser exists)."""
        raise TypeError(f"{type(self).__name__} must implement modules_to_read()")

    def unbind(self) -> None:
        for taps in (self._student_taps, self._teacher_taps):
            if taps is not None:
                taps.remove()
        self._student_taps = self._teacher_taps = None

    def student(self, name: str) -> torch.Tensor:
        return self._student_taps.get(name)

    def teacher(self, name: str) -> torch.Tensor:
        return self._teacher_taps.get(name, frozen=True)

    def feature_terms(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        raise TypeError(f"{type(self).__name__} must implement feature_terms()")

    def forward(self, batch: Batch, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if self._student_taps is None or self._teacher_taps is None:
            raise RuntimeError(f"method {self.name!r} was not bound to its models (call bind first)")
        mask = batch.attention_mask
        if mask is None:
            mask = torch.ones(batch.inputs.shape[:2], dtype=torch.long, device=student_logits.device)
        return label_term(student_logits, batch, self.params.ce_weight) | self.feature_terms(mask.to(student_logits.device))
