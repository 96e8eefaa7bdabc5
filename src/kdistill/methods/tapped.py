"""Shared plumbing of feature and relation methods: hook a student and a teacher layer, compare them.

A subclass sets `kind` ("feature": default tap is the last stage; "stages": every stage, paired
from the last; "embedding": the pooled embedding), optionally builds connectors in `connect`
(from the features' shapes, found by a dry forward pass), and implements
`distance(student_feature, teacher_feature, pair)`; the term is the sum over the pairs.
Its params carry `student`/`teacher` (a module name or tap alias, or a list of them paired in
order; defaults from the zoo model's `default_taps`), `weight` (of its term) and `ce_weight`
(of the label term).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from kdistill.data.splits import Batch
from kdistill.errors import KdistillError, first_line
from kdistill.methods.base import Method, MethodParams, label_term
from kdistill.methods.taps import FeatureTaps, resolve_tap


def _stages(model: nn.Module) -> list[str]:
    taps = getattr(model, "default_taps", None) or {}
    return [taps[k] for k in sorted((k for k in taps if k.startswith("stage") and k[5:].isdigit()), key=lambda k: int(k[5:]))]


class TappedParams(MethodParams):
    student: str | list[str] | None = Field(None, description="student module(s) (dotted names or tap aliases); default from the model")
    teacher: str | list[str] | None = Field(None, description="teacher module(s), paired in order with the student's")
    weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(1.0, ge=0, description="weight of the hard-label cross-entropy")


class TappedMethod(Method):
    """A method reading one student and one teacher module's outputs through forward hooks."""

    kind: ClassVar[Literal["feature", "stages", "embedding"]] = "feature"
    reads_teacher_features = True
    term: ClassVar[str]

    def __init__(self, params: TappedParams):
        super().__init__(params)
        self._student_taps: FeatureTaps | None = None
        self._teacher_taps: FeatureTaps | None = None
        self.pairs: list[tuple[str, str]] = []

    def bind(self, student: nn.Module, teacher: nn.Module | None, example: torch.Tensor, num_samples: int = 0) -> None:
        if teacher is None:
            raise KdistillError(f"distill.method {self.name!r} needs a teacher")
        where = f"distill ({self.name})"
        self.num_samples = num_samples
        self.pairs = self._pairs(student, teacher, where)
        self.unbind()
        self._student_taps = FeatureTaps(student, [s for s, _ in self.pairs])
        self._teacher_taps = FeatureTaps(teacher, [t for _, t in self.pairs])
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                student(example)
                teacher(example)
            self.connect([(self._student_taps.get(s).shape, self._teacher_taps.get(t).shape) for s, t in self.pairs])
        except KdistillError:
            self.unbind()
            raise
        except (RuntimeError, ValueError) as exc:
            self.unbind()
            raise KdistillError(f"{where}: a dry run of the models failed: {first_line(exc)}") from None
        except BaseException:
            self.unbind()
            raise
        finally:
            student.train(was_training)

    def _pairs(self, student: nn.Module, teacher: nn.Module, where: str) -> list[tuple[str, str]]:
        """(student module, teacher module) pairs from the params, or the models' default taps."""
        kind = self.kind
        if kind != "embedding" and not (_stages(student) and _stages(teacher)):
            kind = "embedding"  # an MLP has no feature maps: compare the two embeddings instead
        given_s, given_t = self.params.student, self.params.teacher
        if kind == "stages" and given_s is None and given_t is None:
            n = min(len(_stages(student)), len(_stages(teacher)))
            return list(zip(_stages(student)[-n:], _stages(teacher)[-n:]))
        tap_kind = "embedding" if kind == "embedding" else "feature"
        names_s = given_s if isinstance(given_s, list) else [given_s]
        names_t = given_t if isinstance(given_t, list) else [given_t]
        if len(names_s) == 1 and len(names_t) > 1:
            names_s = names_s * len(names_t)
        if len(names_t) == 1 and len(names_s) > 1:
            names_t = names_t * len(names_s)
        if len(names_s) != len(names_t) or not names_s:
            raise KdistillError(f"{where}: student and teacher list {len(names_s)} and {len(names_t)} modules; pair them one to one")
        return [(resolve_tap(student, s, tap_kind, f"{where} student"), resolve_tap(teacher, t, tap_kind, f"{where} teacher"))
                for s, t in zip(names_s, names_t)]

    def connect(self, shapes: list[tuple[torch.Size, torch.Size]]) -> None:
        """Build trainable connectors for each pair's (student, teacher) feature shapes (default: none);
        raise KdistillError if they cannot be connected."""

    def unbind(self) -> None:
        for taps in (self._student_taps, self._teacher_taps):
            if taps is not None:
                taps.remove()
        self._student_taps = self._teacher_taps = None

    def distance(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor, pair: int) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must implement distance() or feature_terms()")

    def feature_terms(self, batch: Batch, student_features: list[torch.Tensor],
                      teacher_features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weighted feature terms (default: one, `term`: `weight` times the sum over the pairs)."""
        total = sum(self.distance(s, t, i) for i, (s, t) in enumerate(zip(student_features, teacher_features)))
        return {self.term: self.params.weight * total}

    def forward(self, batch: Batch, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if self._student_taps is None or self._teacher_taps is None:
            raise RuntimeError(f"method {self.name!r} was not bound to its models (call bind first)")
        s = [self._student_taps.get(name) for name, _ in self.pairs]
        t = [self._teacher_taps.get(name, frozen=True) for _, name in self.pairs]
        return label_term(student_logits, batch, self.params.ce_weight) | self.feature_terms(batch, s, t)
