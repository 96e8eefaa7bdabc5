"""Contrastive representation distillation (Tian et al., "Contrastive Representation Distillation", ICLR 2020).

Both embeddings are projected by trainable linear heads to `feat_dim` and L2-normalised. Two
memory banks hold one projected embedding per training sample (student's and teacher's),
addressed by the sample's index in the training split (`Batch.index`). Each sample's
positive is its own entry in the other network's bank; `negatives` others are drawn
uniformly. Scores exp(v·w / τ) are normalised by constants estimated on the first batch
(Z = mean score · N, as in the authors' code) and scored with the NCE loss in both
directions; after each step the banks move towards the batch's embeddings (momentum).
Terms: `ce` and `crd` (weight 0.8 as in the paper; add `kd` through `distill.terms`).
The paper draws 16384 negatives; the default here is 4096, which fits a CPU's memory at
batch 128 (set it as the data allows).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdistill.data.splits import Batch
from kdistill.errors import KdistillError
from kdistill.losses import nce_loss
from kdistill.methods.base import register
from kdistill.methods.tapped import TappedMethod, TappedParams


class CRDParams(TappedParams):
    weight: float = Field(0.8, ge=0)
    feat_dim: int = Field(128, gt=0)
    negatives: int = Field(4096, gt=0)
    nce_temperature: float = Field(0.07, gt=0)
    momentum: float = Field(0.5, ge=0, lt=1)


@register
class CRD(TappedMethod):
    name = "crd"
    Params = CRDParams
    kind = "embedding"
    single_process_reason = "its memory banks would be updated by each process with its own samples only"

    def connect(self, shapes: list[tuple[torch.Size, torch.Size]]) -> None:
        if len(shapes) != 1:
            raise KdistillError("distill (crd): contrasts one student and one teacher module; give one of each")
        (student_shape, teacher_shape), = shapes
        n, d = self.num_samples, self.params.feat_dim
        if n < 2:
            raise KdistillError("distill (crd): needs the training split's size (at least 2 samples) for its memory bank")
        self.embed_student = nn.Linear(math.prod(student_shape[1:]), d)
        self.embed_teacher = nn.Linear(math.prod(teacher_shape[1:]), d)
        bound = 1.0 / math.sqrt(d / 3)
        self.register_buffer("memory_student", torch.rand(n, d).mul_(2 * bound).sub_(bound))
        self.register_buffer("memory_teacher", torch.rand(n, d).mul_(2 * bound).sub_(bound))
        self.register_buffer("normalizers", torch.full((2,), -1.0))  # Z_student, Z_teacher; < 0 until estimated

    def feature_terms(self, batch: Batch, student_features: list[torch.Tensor],
                      teacher_features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.params
        student_feature, teacher_feature = student_features[0], teacher_features[0]
        with torch.autocast(student_feature.device.type, enabled=False):
            v_s = F.normalize(self.embed_student(student_feature.float().flatten(1)), dim=1)
            v_t = F.normalize(self.embed_teacher(teacher_feature.float().flatten(1)), dim=1)
            n = self.memory_student.shape[0]
            index = batch.index.to(v_s.device)
            k = min(p.negatives, n - 1)
            negatives = torch.randint(0, n - 1, (index.shape[0], k), device=v_s.device)
            negatives = negatives + (negatives >= index[:, None]).long()  # uniform over the other samples
            contrast = torch.cat([index[:, None], negatives], dim=1)
            # student anchor vs the teacher's bank, teacher anchor vs the student's bank
            scores_s = torch.exp(torch.bmm(self.memory_teacher[contrast], v_s[:, :, None]).squeeze(-1) / p.nce_temperature)
            scores_t = torch.exp(torch.bmm(self.memory_student[contrast], v_t[:, :, None]).squeeze(-1) / p.nce_temperature)
            if self.normalizers[0] < 0:
                self.normalizers.copy_(torch.stack([scores_s.detach().mean(), scores_t.detach().mean()]) * n)
            loss = nce_loss(scores_s / self.normalizers[0], n) + nce_loss(scores_t / self.normalizers[1], n)
            if self.training:
                with torch.no_grad():
                    for bank, v in ((self.memory_student, v_s), (self.memory_teacher, v_t)):
                        bank[index] = F.normalize(p.momentum * bank[index] + (1 - p.momentum) * v.detach(), dim=1)
        return {"crd": p.weight * loss}
