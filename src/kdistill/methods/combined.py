"""`distill.terms`: a main method plus weighted extra terms, seen by the engine as one Method.

Each term is a registered method with its own hyperparameters and a `weight`; it contributes
its distillation terms (its own `ce`, if any, is left to the main method, so labels are
counted once), each multiplied by `weight`. A term name already taken gets the term's
1-based position in `distill.terms` as a suffix (`kd` from the main method, `kd_term2`).
"""

from __future__ import annotations

import torch
from torch import nn

from kdistill.data.splits import Batch
from kdistill.methods.base import Method


class Combined(Method):
    def __init__(self, main: Method, terms: list[tuple[float, Method]]):
        super().__init__(main.params)
        self.main = main
        self.extras = nn.ModuleList(method for _, method in terms)
        self.weights = [float(weight) for weight, _ in terms]
        self.name = "+".join([main.name] + [m.name for _, m in terms])
        self.needs_teacher = main.needs_teacher or any(m.needs_teacher for _, m in terms)
        self.reads_teacher_features = main.reads_teacher_features or any(m.reads_teacher_features for _, m in terms)
        self.single_process_reason = next((m.single_process_reason for m in [main, *(m for _, m in terms)]
                                           if m.single_process_reason), None)

    def members(self) -> list[Method]:
        return [self.main, *self.extras]

    def bind(self, student: nn.Module, teacher: nn.Module | None, example: torch.Tensor, num_samples: int = 0) -> None:
        for method in self.members():
            method.bind(student, teacher, example, num_samples)

    def unbind(self) -> None:
        for method in self.members():
            method.unbind()

    def start_epoch(self, epoch: int, epochs: int) -> None:
        for method in self.members():
            method.start_epoch(epoch, epochs)

    def forward(self, batch: Batch, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out = dict(self.main(batch, student_logits, teacher_logits))
        for index, (weight, method) in enumerate(zip(self.weights, self.extras), start=1):
            for key, value in method(batch, student_logits, teacher_logits).items():
                if key == "ce":
                    continue
                out[key if key not in out else f"{key}_term{index}"] = weight * value
        return out
