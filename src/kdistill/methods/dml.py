"""Deep mutual learning (Zhang et al., "Deep Mutual Learning", CVPR 2018): two students teach each other.

The method owns a peer network that trains alongside the student (same optimiser, same
batches). Each network learns from the labels and from the other's softened predictions:
student: CE + weight·T²·KL(p_peer ‖ p_student), peer: CE + weight·T²·KL(p_student ‖ p_peer),
each target detached, so each term trains only the network it is written for (the paper
updates the two in turn; one joint step of the summed loss has the same per-network
gradients). `peer` is a zoo spec (`{name: mlp, hidden: [64]}`); by default a copy of the
student's architecture, re-initialised with each layer's PyTorch default (`reset_parameters`,
not the zoo model's own initialisation; give `peer` to get that). No teacher run is needed; the peer is saved in
the checkpoint, the student in the run directory.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import Field
from torch import nn

from kdistill.data.splits import Batch
from kdistill.errors import KdistillError
from kdistill.losses import kd_loss
from kdistill.methods.base import Method, MethodParams, labeled_cross_entropy, register
from kdistill.models import build_model


class DMLParams(MethodParams):
    peer: dict[str, Any] | None = Field(None, description="zoo spec of the peer (default: the student's architecture)")
    weight: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)


@register
class DML(Method):
    name = "dml"
    Params = DMLParams
    needs_teacher = False

    def bind(self, student: nn.Module, teacher: nn.Module | None, example: torch.Tensor, num_samples: int = 0) -> None:
        if hasattr(self, "peer"):
            return
        if self.params.peer is None:
            peer = copy.deepcopy(student)
            for module in peer.modules():
                module._forward_hooks.clear()  # a feature method's taps on the student must not follow the copy
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        else:
            spec = dict(self.params.peer)
            name = spec.pop("name", None)
            if not isinstance(name, str):
                raise KdistillError("distill.peer: a zoo spec with a name, e.g. {name: mlp, hidden: [64]}")
            was_training = student.training
            student.eval()
            with torch.no_grad():
                num_classes = student(example).shape[-1]
            student.train(was_training)
            peer = build_model(name, spec, tuple(example.shape[1:]), num_classes, where="distill.peer")
        self.peer = peer.to(next(student.parameters()).device)

    def forward(self, batch: Batch, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
        p = self.params
        peer_logits = self.peer(batch.inputs)
        return {
            "ce": labeled_cross_entropy(student_logits, batch),
            "dml": p.weight * kd_loss(student_logits, peer_logits.detach(), p.temperature),
            "peer_ce": labeled_cross_entropy(peer_logits, batch),
            "peer_dml": p.weight * kd_loss(peer_logits, student_logits.detach(), p.temperature),
        }
