"""Shared plumbing of feature and relation methods: hook a student and a teacher layer, compare them.

A subclass sets `kind` ("feature": default tap is the last stage; "embedding": the pooled
embedding), optionally builds a connector in `connect` (from the two features' shapes, found
by a dry forward pass), and implements `distance(student_feature, teacher_feature)`.
Its params carry `student`/`teacher` (module names or tap aliases; defaults from the zoo
model's `default_taps`), `weight` (of its term) and `ce_weight` (of the label term).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdistill.data.splits import Batch
from kdistill.errors import KdistillError
from kdistill.methods.base import Method, MethodParams
from kdistill.taps import FeatureTaps, resolve_tap


def _has_stages(model: nn.Module) -> bool:
    return any(k.startswith("stage") for k in (getattr(model, "default_taps", None) or {}))


class TappedParams(MethodParams):
    student: str | None = Field(None, description="student module (dotted name or tap alias); default from the model")
    teacher: str | None = Field(None, description="teacher module (dotted name or tap alias); default from the model")
    weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(1.0, ge=0, description="weight of the hard-label cross-entropy")


class TappedMethod(Method):
    """A method reading one student and one teacher module's outputs through forward hooks."""

    kind: ClassVar[Literal["feature", "embedding"]] = "feature"
    reads_teacher_features = True
    term: ClassVar[str]

    def __init__(self, params: TappedParams):
        super().__init__(params)
        self._student_taps: FeatureTaps | None = None
        self._teacher_taps: FeatureTaps | None = None
        self.student_module = self.teacher_module = ""

    def bind(self, student: nn.Module, teacher: nn.Module | None, example: torch.Tensor, num_samples: int = 0) -> None:
        if teacher is None:
            raise KdistillError(f"distill.method {self.name!r} needs a teacher")
        where = f"distill ({self.name})"
        self.num_samples = num_samples
        kind = self.kind
        if kind == "feature" and not (_has_stages(student) and _has_stages(teacher)):
            kind = "embedding"  # an MLP has no feature maps: compare the two embeddings instead
        self.student_module = resolve_tap(student, self.params.student, kind, f"{where} student")
        self.teacher_module = resolve_tap(teacher, self.params.teacher, kind, f"{where} teacher")
        self.unbind()
        self._student_taps = FeatureTaps(student, [self.student_module])
        self._teacher_taps = FeatureTaps(teacher, [self.teacher_module])
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                student(example)
                teacher(example)
            s, t = self._student_taps.get(self.student_module), self._teacher_taps.get(self.teacher_module)
            self.connect(s.shape, t.shape)
        except KdistillError:
            self.unbind()
            raise
        finally:
            student.train(was_training)

    def connect(self, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        """Build trainable connectors for these feature shapes (default: none); raise KdistillError if impossible."""

    def unbind(self) -> None:
        for taps in (self._student_taps, self._teacher_taps):
            if taps is not None:
                taps.remove()
        self._student_taps = self._teacher_taps = None

    def distance(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must implement distance() or feature_terms()")

    def feature_terms(self, batch: Batch, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted feature terms (default: one, `term`, weighted by `weight`)."""
        return {self.term: self.params.weight * self.distance(student_feature, teacher_feature)}

    def forward(self, batch: Batch, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if self._student_taps is None or self._teacher_taps is None:
            raise RuntimeError(f"method {self.name!r} was not bound to its models (call bind first)")
        s = self._student_taps.get(self.student_module)
        t = self._teacher_taps.get(self.teacher_module, frozen=True)
        terms = {}
        if self.params.ce_weight > 0:
            terms["ce"] = self.params.ce_weight * F.cross_entropy(student_logits.float(), batch.labels)
        return terms | self.feature_terms(batch, s, t)
