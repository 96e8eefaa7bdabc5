"""The Method contract: (batch, student logits, teacher logits) -> dict of weighted loss terms.

The engine sums the dict and logs each term; it knows nothing about any method
(the contract of mdistiller's `Distiller.forward_train`). A Method is an nn.Module so
that it can own trainable extras (connectors); those train with the student.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from kdistill.config import format_validation_error
from kdistill.data.splits import Batch
from kdistill.errors import KdistillError


class MethodParams(BaseModel):
    """Base for a method's hyperparameters; unknown keys and non-finite numbers (inf, nan, 1e400) are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Method(nn.Module):
    """Subclass, set `name`, `Params`, `needs_teacher`, and implement `forward`."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    needs_teacher: ClassVar[bool] = True
    # True for methods that read the teacher's intermediate features (hooks): they need a live
    # teacher, since the teacher output cache holds logits only.
    reads_teacher_features: ClassVar[bool] = False
    # Why the method cannot run under torchrun (state that each process would update on its own), or None.
    single_process_reason: ClassVar[str | None] = None
    # The tasks whose models the method can read: "vision" (kdistill's engine: zoo, timm, torchvision models;
    # feature methods hook their modules) and "text" (Hugging Face classifiers through DistillationTrainer).
    tasks: ClassVar[tuple[str, ...]] = ("vision",)
    # Why the method cannot learn from unlabelled training samples (transfer data), or None: a teacher-free
    # method has nothing else to learn from on them.
    needs_every_label: ClassVar[str | None] = None
    # False for a method that learns nothing from an unlabelled sample (plain CE): the runners then leave such
    # samples out instead of spending steps on them, so it trains as `kdistill train` would.
    learns_from_unlabeled: ClassVar[bool] = True

    def __init__(self, params: MethodParams):
        super().__init__()
        self.params = params

    def forward(
        self, batch: Batch, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        raise TypeError(f"{type(self).__name__} must implement forward()")

    def bind(self, student: nn.Module, teacher: nn.Module | None, example: torch.Tensor, num_samples: int = 0) -> None:
        """Called once before training (and before the optimiser is built) with both models, two
        example inputs and the training split's size: feature methods hook their layers here and
        size their connectors (CRD its memory bank)."""

    def unbind(self) -> None:
        """Remove whatever `bind` attached to the models (forward hooks)."""

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the engine before each epoch (0-based), for warm-ups and schedules of a loss weight."""

    def members(self) -> list["Method"]:
        """The methods this one is made of (itself; a `distill.terms` combination lists its parts)."""
        return [self]


def labeled_cross_entropy(logits: torch.Tensor, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy (float32) over the batch's labelled samples; unlabelled ones (label -1, transfer data) add
    nothing; a mixed image (mixup, cutmix) adds lambda · CE(own label) + (1 − lambda) · CE(partner's label),
    with weight lambda + (1 − lambda) where both labels exist (`Batch.label_weights`). The sum is divided by (samples here x `batch.labeled_share`): the mean over the labelled samples,
    of the global batch once the processes' gradients are averaged (kdistill.training.engine; without a share, of this
    batch). A batch without labels gives 0, with the graph kept."""
    labels = batch.labels
    labeled = labels >= 0
    weights = batch.label_weights()
    share = batch.labeled_share if batch.labeled_share is not None else float(weights.mean())
    if batch.mixed is None and share == 1.0 and bool(labeled.all()):  # every sample labelled: the plain mean
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    if share <= 0 or not bool(weights.any()):
        return logits.float().sum() * 0.0
    if batch.mixed is None:
        total = F.cross_entropy(logits.float()[labeled], labels[labeled], reduction="sum", label_smoothing=label_smoothing)
    else:  # mixup / cutmix: lambda · CE(own label) + (1 − lambda) · CE(partner's label), each where it exists
        partner_labels, lam = batch.mixed
        partner_labels, lam = partner_labels.to(labels.device), lam.to(logits.device)
        own = F.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none", label_smoothing=label_smoothing)
        other = F.cross_entropy(logits.float(), partner_labels.clamp(min=0), reduction="none", label_smoothing=label_smoothing)
        total = (lam * labeled * own + (1 - lam) * (partner_labels >= 0) * other).sum()
    return total / (labels.shape[0] * share)


def label_term(student_logits: torch.Tensor, batch: Batch, weight: float) -> dict[str, torch.Tensor]:
    """{"ce": weight · cross-entropy on the labelled samples} in float32, or {} when the weight is 0 (a zero
    term is left out, not computed)."""
    if weight <= 0:
        return {}
    return {"ce": weight * labeled_cross_entropy(student_logits, batch)}


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a Method available by its `name` in `distill.method`."""
    METHODS[cls.name] = cls
    return cls


def check_task(method: Method, task: str, where: str = "distill.method") -> None:
    """One line when `method` (or one of its terms) cannot run on `task`."""
    for member in method.members():
        if task not in member.tasks:
            raise KdistillError(f"{where}: method {member.name!r} runs on {' and '.join(member.tasks)} tasks only "
                                f"(not {task}); methods that run on {task} tasks: "
                                + ", ".join(sorted(n for n, c in METHODS.items() if task in c.tasks)))


def learns_from_unlabeled(method: Method) -> bool:
    return any(member.learns_from_unlabeled for member in method.members())


def check_labels(method: Method, labels: torch.Tensor, mixing: str | None = None) -> None:
    """One line when `method` (or a term) needs every sample's own label and the training labels hold unlabelled
    samples (-1) or the images are mixed (`mixing`: mixup or cutmix)."""
    unlabeled = int((labels < 0).sum())
    for member in method.members():
        if member.needs_every_label and unlabeled:
            raise KdistillError(f"distill.method {member.name!r} {member.needs_every_label}, and {unlabeled:,} training "
                                "samples are unlabelled (data.labeled_samples / data.unlabeled); use a method that "
                                "learns from a teacher (kd, dkd, dist, ...)")
        if member.needs_every_label and mixing:
            raise KdistillError(f"distill.method {member.name!r} {member.needs_every_label}, and data.augment's "
                                f"{mixing} gives every image two labels")


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
        message = message.replace("unknown key '", f"unknown parameter '{where}.")
        if where == "distill" and "unknown parameter" in message:
            message += "; settings of other methods go in their own section, e.g. distill.kd: {temperature: 4}"
        raise KdistillError(message) from None
    return cls(params)
