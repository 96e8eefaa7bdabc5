"""Read any module's output by its dotted name with forward hooks (no model rewrite; torchdistill's idea).

A zoo model declares `default_taps` (`stage1`..`stageN`, `embedding`); a method asks for
a tap by alias (`stage2`), by module name (`layer2`, `stages.1`), or by kind (None: the
last stage for feature maps, the embedding for relation methods). `transformer_layout` finds the
layers of a Hugging Face encoder, which the text feature methods (TinyBERT, MiniLM) hook.
"""

from __future__ import annotations

from dataclasses import dataclass
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


# The names Hugging Face encoders give their attention projections (BERT / RoBERTa / MiniLM; DistilBERT; most others).
QKV_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"))


@dataclass(frozen=True)
class TransformerLayout:
    """Where a Hugging Face encoder's parts are, as dotted module names: the embeddings, each layer, and each
    layer's query / key / value projections; with its width and number of attention heads."""

    embeddings: str | None
    layers: list[str]
    query: list[str]
    key: list[str]
    value: list[str]
    hidden_size: int
    heads: int


def _config_value(config: object, *names: str) -> int | None:
    return next((int(getattr(config, n)) for n in names if getattr(config, n, None)), None)


def transformer_layout(model: nn.Module, where: str) -> TransformerLayout:
    """The layout of a Hugging Face encoder (BERT, RoBERTa, DistilBERT, ...) read from its modules: the first
    ModuleList of `num_hidden_layers` layers, and in each layer the Linear projections named as in QKV_NAMES."""
    config = getattr(model, "config", None)
    count = _config_value(config, "num_hidden_layers", "n_layers")
    heads = _config_value(config, "num_attention_heads", "n_heads")
    width = _config_value(config, "hidden_size", "dim")
    modules = dict(model.named_modules())
    lists = [name for name, m in modules.items() if isinstance(m, nn.ModuleList) and count and len(m) == count]
    if not (count and heads and width) or not lists:
        raise KdistillError(f"{where}: {type(model).__name__} is not a transformer encoder kdistill can read (its config "
                            "names no layer count, heads and width, or no list of that many layers)")
    layers = [f"{lists[0]}.{i}" for i in range(count)]
    projections: list[list[str]] = []
    for layer in layers:
        inside = {name.rsplit(".", 1)[-1]: name for name, m in modules.items()
                  if name.startswith(layer + ".") and isinstance(m, nn.Linear)}
        found = next(([inside[n] for n in names] for names in QKV_NAMES if all(n in inside for n in names)), None)
        if found is None:
            raise KdistillError(f"{where}: no query/key/value projections found in {layer} of {type(model).__name__} "
                                f"(looked for {', '.join('/'.join(n) for n in QKV_NAMES)})")
        projections.append(found)
    prefix = getattr(model, "base_model_prefix", "")
    embeddings = next((n for n in (f"{prefix}.embeddings", "embeddings") if n in modules), None)
    query, key, value = (list(column) for column in zip(*projections))
    return TransformerLayout(embeddings, layers, query, key, value, width, heads)
