"""TinyBERT's intermediate-layer distillation (Jiao et al., "TinyBERT: Distilling BERT for Natural Language
Understanding", Findings of EMNLP 2020): CE + weight · Σ MSE(H_s W, H_t) + attention_weight · Σ MSE(A_s, A_t).

H: the embeddings' output and each mapped layer's output (hidden states); W: one learned linear projection
from the student's width to the teacher's (the official code's `fit_dense`, shared by every layer; none when
the widths are equal); A: each mapped layer's attention scores q·k / sqrt(d) before the softmax, per head
(both models need the same number of heads). Student layer m learns from teacher layer m · N_t / N_s
(the uniform strategy) unless `teacher_layers` names them. MSEs are means over the real tokens.
The paper's prediction-layer stage is KD on the logits: add it as a term (`terms: [{method: kd}]`).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from kdistill.errors import KdistillError
from kdistill.losses.transformer import attention_score_mse, masked_mse
from kdistill.methods.base import register
from kdistill.methods.transformer import TransformerMethod, TransformerParams, uniform_layer_map
from kdistill.methods.taps import TransformerLayout


class TinyBERTParams(TransformerParams):
    weight: float = Field(1.0, ge=0, description="weight of the hidden-state MSE (embeddings and mapped layers)")
    attention_weight: float = Field(1.0, ge=0, description="weight of the attention-score MSE")
    teacher_layers: list[int] | None = Field(None, description="0-based teacher layer for each student layer")
    embeddings: bool = Field(True, description="also match the embedding layers' outputs")


@register
class TinyBERT(TransformerMethod):
    name = "tinybert"
    Params = TinyBERTParams

    def modules_to_read(self, student: TransformerLayout, teacher: TransformerLayout) -> tuple[list[str], list[str]]:
        where = "distill (tinybert)"
        mapped = self.params.teacher_layers or uniform_layer_map(len(student.layers), len(teacher.layers))
        if len(mapped) != len(student.layers) or not all(0 <= t < len(teacher.layers) for t in mapped):
            raise KdistillError(f"{where}: teacher_layers must give one teacher layer (0..{len(teacher.layers) - 1}) for "
                                f"each of the student's {len(student.layers)} layers (got {mapped})")
        if self.params.attention_weight > 0 and student.heads != teacher.heads:
            raise KdistillError(f"{where}: attention transfer compares head by head, and the student has {student.heads} "
                                f"heads, the teacher {teacher.heads}; set attention_weight: 0 or use minilm with relation_heads")
        self.heads = student.heads
        self.hidden_pairs = [(student.layers[m], teacher.layers[t]) for m, t in enumerate(mapped)]
        if self.params.embeddings:
            if student.embeddings is None or teacher.embeddings is None:
                raise KdistillError(f"{where}: no embeddings module found; set embeddings: false")
            self.hidden_pairs.insert(0, (student.embeddings, teacher.embeddings))
        self.attention_pairs = [((student.query[m], student.key[m]), (teacher.query[t], teacher.key[t]))
                                for m, t in enumerate(mapped)]
        self.projection = nn.Linear(student.hidden_size, teacher.hidden_size) \
            if student.hidden_size != teacher.hidden_size else nn.Identity()
        names_s = [s for s, _ in self.hidden_pairs] + [n for (q, k), _ in self.attention_pairs for n in (q, k)]
        names_t = [t for _, t in self.hidden_pairs] + [n for _, (q, k) in self.attention_pairs for n in (q, k)]
        return names_s, names_t

    def feature_terms(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {}
        if self.params.weight > 0:
            hidden = sum(masked_mse(self.projection(self.student(s)), self.teacher(t), mask) for s, t in self.hidden_pairs)
            terms["hidden"] = self.params.weight * hidden
        if self.params.attention_weight > 0:
            attention = sum(attention_score_mse(self.student(sq), self.student(sk), self.teacher(tq), self.teacher(tk),
                                                mask, self.heads) for (sq, sk), (tq, tk) in self.attention_pairs)
            terms["attention"] = self.params.attention_weight * attention
        return terms
