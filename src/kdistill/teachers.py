"""Teachers: frozen models that only ever run inference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.errors import KdistillError
from kdistill.models import load_run_model


class FrozenTeacher:
    """Wraps a trained model so it cannot train: eval mode, no grad-requiring parameters,
    every call under `torch.inference_mode` (no autograd graph, no version counters).

    It is not an nn.Module on purpose: it never appears in the student's parameters,
    state dict or optimizer.
    """

    def __init__(self, model: nn.Module, spec: dict[str, Any] | None = None, source: str = ""):
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.spec = spec or {}
        self.source = source

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
            return self.model(inputs)


def load_teacher(run_dir: str | Path) -> FrozenTeacher:
    """Load a teacher from a kdistill run directory (model.json + model.safetensors)."""
    path = Path(run_dir)
    if not path.exists():
        raise KdistillError(f"teacher: run directory not found: {path}")
    if not (path / "model.json").is_file():
        raise KdistillError(f"teacher: {path} is not a kdistill run directory (no model.json); train one with `kdistill train`")
    model, spec = load_run_model(path)
    return FrozenTeacher(model, spec, source=str(path))
