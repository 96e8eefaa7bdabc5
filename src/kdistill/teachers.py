"""Teachers: frozen models that only ever run inference."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.digests import file_sha256
from kdistill.errors import KdistillError
from kdistill.rundir import write_owned_text
from kdistill.models import load_run_model


class FrozenTeacher:
    """Wraps a trained model so it cannot train: eval mode, no grad-requiring parameters,
    every call under `torch.inference_mode` (no autograd graph, no version counters).

    It is not an nn.Module on purpose: it never appears in the student's parameters,
    state dict or optimizer. `precision="bf16"` runs it under bf16 autocast (its logits
    come back as float32 either way).
    """

    def __init__(self, model: nn.Module, spec: dict[str, Any] | None = None, source: str = "",
                 weights_sha256: str | None = None, precision: str = "fp32"):
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.spec = spec or {}
        self.source = source
        self.weights_sha256 = weights_sha256
        self.precision = precision
        self.sources = [source] if source else []  # every run directory it was loaded from (ensembles: several)

    def to(self, device: torch.device | str) -> "FrozenTeacher":
        self.model.to(device)
        return self

    @property
    def classes(self) -> list[str]:
        return list(self.spec.get("classes", []))

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if any(m.training for m in self.model.modules()):  # something flipped a submodule to train mode: put it back
            self.model.eval()
        with torch.inference_mode():
            if self.precision == "bf16":
                with torch.autocast(inputs.device.type, dtype=torch.bfloat16):
                    return self.model(inputs).float()
            with torch.autocast(inputs.device.type, enabled=False):  # fp32 even inside the student's bf16 autocast
                return self.model(inputs)


class MeanOfModels(nn.Module):
    """An ensemble teacher's network: the mean of its members' logits."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(inputs) for member in self.members]).mean(dim=0)


def load_teacher(run_dir: str | Path | list[str], precision: str = "fp32") -> FrozenTeacher:
    """Load a teacher from a kdistill run directory (model.json + model.safetensors), or an
    ensemble from a list of them (same classes and input shape; their logits are averaged)."""
    if isinstance(run_dir, (list, tuple)):
        if not run_dir:
            raise KdistillError("teacher: an empty list; give a run directory or a list of them")
        members = [load_teacher(path, precision) for path in run_dir]
        if len(members) == 1:
            return members[0]
        first = members[0]
        for member in members[1:]:
            for key in ("classes", "input_shape"):
                if member.spec.get(key) != first.spec.get(key):
                    raise KdistillError(f"teacher: ensemble members {first.source} and {member.source} differ in {key}")
        combined = hashlib.sha256("".join(m.weights_sha256 or "" for m in members).encode()).hexdigest()
        spec = {**first.spec, "name": "ensemble", "kwargs": {"members": [m.spec.get("name") for m in members]}}
        teacher = FrozenTeacher(MeanOfModels([m.model for m in members]), spec, source=first.source,
                                weights_sha256=combined, precision=precision)
        teacher.sources = [m.source for m in members]
        return teacher
    path = Path(run_dir)
    if not path.exists():
        raise KdistillError(f"teacher: run directory not found: {path}")
    if not (path / "model.json").is_file():
        raise KdistillError(f"teacher: {path} is not a kdistill run directory (no model.json); train one with `kdistill train`")
    model, spec = load_run_model(path)
    return FrozenTeacher(model, spec, source=str(path), weights_sha256=file_sha256(path / "model.safetensors"),
                         precision=precision)


TEACHER_RECORD = "teacher.json"


def record_teacher(run_dir: Path, teacher: FrozenTeacher) -> None:
    """Remember which teacher (absolute path + weights hash) a distilled run learns from."""
    paths = [os.path.abspath(source) for source in teacher.sources]
    record = {"path": paths[0] if len(paths) == 1 else paths, "weights_sha256": teacher.weights_sha256}
    write_owned_text(Path(run_dir), TEACHER_RECORD, json.dumps(record, indent=2) + "\n")


def recorded_teacher(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / TEACHER_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KdistillError(f"{path}: corrupt teacher record") from None


def check_same_teacher(run_dir: Path, teacher: FrozenTeacher) -> None:
    """A run resumed or evaluated with a teacher whose weights changed would silently mix two teachers: refuse."""
    record = recorded_teacher(run_dir)
    if record and teacher.weights_sha256 and record.get("weights_sha256") != teacher.weights_sha256:
        raise KdistillError(
            f"teacher {teacher.source} has different weights from the one {run_dir} was distilled from "
            f"(sha256 {str(record.get('weights_sha256'))[:12]}... vs {teacher.weights_sha256[:12]}...); "
            "retrain the student with --overwrite, or restore that teacher"
        )
