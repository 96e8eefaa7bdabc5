"""`distill.terms`: a main method plus weighted extra terms, seen by the engine as one Method; and
`build_distill_method`, which builds the `distill:` section (main method, per-method sections, terms).

Each term is a registered method with its own hyperparameters and a `weight`; it contributes
its distillation terms (its own `ce`, if any, is left to the main method, so labels are
counted once), each multiplied by `weight`. A term name already taken gets the term's
1-based position in `distill.terms` as a suffix (`kd` from the main method, `kd_term2`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdistill.data.splits import Batch
from kdistill.errors import KdistillError
from kdistill.methods.base import METHODS, Method, build_method, check_task


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


def build_distill_method(name: str, raw_params: dict[str, Any], terms: list[dict[str, Any]], task: str | None = None) -> Method:
    """The main method (with its hyperparameters), combined with `distill.terms` when there are any, and checked
    to run on `task` when one is given (one line naming the methods that do).

    `raw_params` holds the `distill` section's keys other than method/terms/cache settings.
    A key that names a registered method is that method's own section (`kd: {temperature: 4}`):
    every section is validated, and the selected method takes its section's values, overridden
    by top-level keys. So one config can carry several methods' settings and
    `distill.method=NAME` switches between them.
    """
    sections = {k: v for k, v in raw_params.items() if k in METHODS}
    for section, values in sections.items():
        if not isinstance(values, dict):
            raise KdistillError(f"distill.{section}: the parameters of method {section!r} must be a mapping, e.g. {{temperature: 4}}")
        build_method(section, values, where=f"distill.{section}")
    top = {k: v for k, v in raw_params.items() if k not in METHODS}
    main = build_method(name, {**sections.get(name, {}), **top})
    method = Combined(main, _terms(terms)) if terms else main
    if task is not None:
        check_task(method, task)
    return method


def _terms(terms: list[dict[str, Any]]) -> list[tuple[float, Method]]:
    """`distill.terms` as (weight, method) pairs, each term's method and weight checked."""
    built = []
    for i, term in enumerate(terms):
        where = f"distill.terms[{i}]"
        if not isinstance(term, dict) or not isinstance(term.get("method"), str):
            raise KdistillError(f"{where}: a term is a mapping with a method name, e.g. {{method: at, weight: 1000}}")
        params = {k: v for k, v in term.items() if k not in ("method", "weight")}
        weight = term.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise KdistillError(f"{where}.weight must be a number >= 0 (got {weight!r})")
        built.append((float(weight), build_method(term["method"], params, where=where)))
    return built
