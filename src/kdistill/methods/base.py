"""The Method contract: (batch, student logits, teacher logits) -> dict of weighted loss terms.

The engine sums the dict and logs each term; it knows nothing about any method
(the contract of mdistiller's `Distiller.forward_train`). A Method is an nn.Module so
that it can own trainable extras (connectors); those train with the student.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from kdistill.config import format_validation_error
from kdistill.data.splits import Batch
from kdistill.errors import KdistillError


class MethodParams(BaseModel):
    """Base for a method's hyperparameters; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Method(nn.Module):
    """Subclass, set `name`, `Params`, `needs_teacher`, and implement `forward`."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    needs_teacher: ClassVar[bool] = True
    # True for methods that read the teacher's intermediate features (hooks): they need a live
    # teacher, since the teacher output cache holds logits only.
    reads_teacher_features: ClassVar[bool] = False

    def __init__(self, params: MethodParams):
        super().__init__()
        self.params = params

    def forward(
        self, batch: Batch, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        raise TypeError(f"{type(self).__name__} must implement forward()")


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a Method available by its `name` in `distill.method`."""
    METHODS[cls.name] = cls
    return cls


def build_method(name: str, raw_params: dict[str, Any], where: str = "distill") -> Method:
    """Look a method up by name and validate its hyperparameters."""
    cls = METHODS.get(name)
    if cls is None:
        raise KdistillError(f"{where}.method: unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    try:
        params = cls.Params.model_validate(raw_params)
    except ValidationError as exc:
        known = ", ".join(cls.Params.model_fields) or "none"
        message = format_validation_error(exc, f"{where} (method {name!r}, parameters: {known})")
        raise KdistillError(message.replace("unknown key '", f"unknown parameter '{where}.")) from None
    return cls(params)
