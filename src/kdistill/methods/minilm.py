"""MiniLM's deep self-attention distillation (Wang et al., "MiniLM: Deep Self-Attention Distillation for
Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS 2020):
CE + weight · KL(A_t ‖ A_s) + value_weight · KL(VR_t ‖ VR_s), of one student and one teacher layer
(by default the last of each, as in the paper).

A = softmax(q·kᵀ / sqrt(d)) per head: the attention distributions; VR = softmax(v·vᵀ / sqrt(d)): the value
relation. Each KL is averaged over the heads and the real query tokens; padded keys are left out. No
connector is needed, so the widths may differ; `relation_heads` splits both models' projections into that
many heads (MiniLMv2's relation heads) when their head counts differ.
"""

from __future__ import annotations

import torch
from pydantic import Field

from kdistill.errors import KdistillError
from kdistill.losses.transformer import relation_kl
from kdistill.methods.base import register
from kdistill.methods.transformer import TransformerMethod, TransformerParams
from kdistill.methods.taps import TransformerLayout


class MiniLMParams(TransformerParams):
    weight: float = Field(1.0, ge=0, description="weight of the self-attention distribution KL")
    value_weight: float = Field(1.0, ge=0, description="weight of the value-relation KL")
    student_layer: int = Field(-1, description="the student layer (0-based; -1: the last)")
    teacher_layer: int = Field(-1, description="the teacher layer (0-based; -1: the last; MiniLMv2 prefers an upper-middle one for large teachers)")
    relation_heads: int | None = Field(None, ge=1, description="split both models' projections into this many heads")


def _layer(index: int, count: int, what: str) -> int:
    if not -count <= index < count:
        raise KdistillError(f"distill (minilm): {what}_layer {index} is not one of the {what}'s {count} layers")
    return index % count


@register
class MiniLM(TransformerMethod):
    name = "minilm"
    Params = MiniLMParams

    def modules_to_read(self, student: TransformerLayout, teacher: TransformerLayout) -> tuple[list[str], list[str]]:
        s = _layer(self.params.student_layer, len(student.layers), "student")
        t = _layer(self.params.teacher_layer, len(teacher.layers), "teacher")
        heads = self.params.relation_heads
        if heads is None:
            if student.heads != teacher.heads:
                raise KdistillError(f"distill (minilm): the student has {student.heads} attention heads and the teacher "
                                    f"{teacher.heads}; set relation_heads to a number that divides both widths "
                                    f"({student.hidden_size} and {teacher.hidden_size})")
            heads = student.heads
        for layout, what in ((student, "student"), (teacher, "teacher")):
            if layout.hidden_size % heads:
                raise KdistillError(f"distill (minilm): relation_heads {heads} does not divide the {what}'s width "
                                    f"{layout.hidden_size}")
        self.heads = heads
        self.student_qkv = (student.query[s], student.key[s], student.value[s])
        self.teacher_qkv = (teacher.query[t], teacher.key[t], teacher.value[t])
        return list(self.student_qkv), list(self.teacher_qkv)

    def feature_terms(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        sq, sk, sv = (self.student(n) for n in self.student_qkv)
        tq, tk, tv = (self.teacher(n) for n in self.teacher_qkv)
        terms = {}
        if self.params.weight > 0:
            terms["attention"] = self.params.weight * relation_kl(sq, sk, tq, tk, mask, self.heads)
        if self.params.value_weight > 0:
            terms["value_relation"] = self.params.value_weight * relation_kl(sv, sv, tv, tv, mask, self.heads)
        return terms
