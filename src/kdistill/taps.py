"""Read any module's output by its dotted name with forward hooks (no model rewrite; torchdistill's idea).

A zoo model declares `default_taps` (`stage1`..`stageN`, `embedding`); a method asks for
a tap by alias (`stage2`), by module name (`layer2`, `stages.1`), or by kind (None: the
last stage for feature maps, the embedding for relation methods).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from kdistill.errors import KdistillError


def _available(model: nn.Module) -> str:
    names = [n for n, _ in model.named_modules() if n]
    taps = getattr(model, "default_taps", {}) or {}
    shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
    aliases = f"; aliases: {', '.join(f'{k}={v}' for k, v in taps.items())}" if taps else ""
    return f"available modules: {shown}{aliases}"


def resolve_tap(model: nn.Module, name: str | None, kind: Literal["feature", "embedding"], where: str) -> str:
    """The dotted module name a method should hook, from a user's name, an alias, or the model's defaults."""
    taps = dict(getattr(model, "default_taps", {}) or {})
    if name is None:
        stages = sorted((k for k in taps if k.startswith("stage") and k[5:].isdigit()), key=lambda k: int(k[5:]))
        chosen = taps.get("embedding") if kind == "embedding" or not stages else taps[stages[-1]]
        if chosen is None:
            raise KdistillError(f"{where}: {type(model).__name__} declares no default taps; name a module ({_available(model)})")
        return chosen
    if name in taps:
        return taps[name]
    if name not in dict(model.named_modules()) or name == "":
        raise KdistillError(f"{where}: no module named {name!r} in {type(model).__name__} ({_available(model)})")
    return name


class FeatureTaps:
    """Forward hooks keeping the latest output of named modules; `remove()` takes every hook off again."""

    def __init__(self, model: nn.Module, names: list[str]):
        modules = dict(model.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._keep(name)) for name in dict.fromkeys(names)]

    def _keep(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            self.outputs[name] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def get(self, name: str, *, frozen: bool = False) -> torch.Tensor:
        """The last output of `name`; `frozen=True` (teacher features) returns a normal, gradient-free copy
        usable outside inference mode (tensors made under `inference_mode` cannot be saved for backward)."""
        if name not in self.outputs:
            raise RuntimeError(f"module {name!r} did not run in the last forward pass")
        value = self.outputs[name]
        return value.detach().clone() if frozen else value

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.outputs = {}

    @property
    def active(self) -> int:
        return len(self._handles)
