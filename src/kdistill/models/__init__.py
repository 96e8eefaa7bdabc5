"""Model zoo by name. A model is rebuilt from `model.json` (name + kwargs + data shape)."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from kdistill.errors import KdistillError
from kdistill.ownership import fresh_tmp
from kdistill.models.cnn import CNN
from kdistill.models.mlp import MLP
from kdistill.models.resnet_cifar import resnet8x4, resnet20, resnet32x4, resnet56
from kdistill.models.seed_cnn import SeedLargeCNN, SeedSmallCNN
from kdistill.models.wrn import wrn_16_2, wrn_40_2

ZOO: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "seed_large_cnn": SeedLargeCNN,
    "seed_small_cnn": SeedSmallCNN,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "wrn_40_2": wrn_40_2,
    "wrn_16_2": wrn_16_2,
}
_SHAPE_ARGS = ("input_shape", "num_classes")
# `timm:NAME` and `torchvision:NAME` build a model from that package (an optional extra).
EXTERNAL_PREFIXES = ("timm", "torchvision")
_EXTERNAL_RESERVED = {"timm": ("pretrained", "num_classes", "in_chans"), "torchvision": ("weights", "num_classes")}


def _import_external(prefix: str, name: str):
    """Import timm or torchvision.models only when a model asks for it."""
    hint = f"pip install 'kdistill[{prefix}]'"
    try:
        return importlib.import_module("timm" if prefix == "timm" else "torchvision.models")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] != prefix:
            raise KdistillError(f"model {name!r} needs {prefix}, which failed to import ({exc}): {hint}") from None
        raise KdistillError(f"model {name!r} needs {prefix}: {hint}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. a torchvision built for another torch
        raise KdistillError(
            f"model {name!r} needs {prefix}, which is installed but does not import "
            f"({type(exc).__name__}: {exc}); install a {prefix} built for torch {torch.__version__}"
        ) from None


def _build_external(name: str, kwargs: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, where: str) -> nn.Module:
    prefix, _, arch = name.partition(":")
    if not arch:
        raise KdistillError(f"{where}.name: {name!r} names no model after '{prefix}:' (e.g. '{prefix}:resnet18')")
    for key in kwargs:
        if key in _EXTERNAL_RESERVED[prefix]:
            raise KdistillError(f"{where}.{key}: set by kdistill for {prefix} models (weights are never downloaded; classes and channels come from the data)")
    if len(input_shape) != 3:
        raise KdistillError(f"{where}: model {name!r} needs image inputs (C, H, W), the data gives {tuple(input_shape)}")
    if prefix == "torchvision" and input_shape[0] != 3:
        raise KdistillError(
            f"{where}: model {name!r} takes 3-channel images, the data has {input_shape[0]}; "
            f"use 'timm:{arch}' (timm adapts the stem to in_chans) or a kdistill zoo model"
        )
    module = _import_external(prefix, name)
    try:
        if prefix == "timm":
            return module.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=int(input_shape[0]), **kwargs)
        return module.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except Exception as exc:  # noqa: BLE001 - unknown names and bad kwargs raise various types
        raise KdistillError(f"{where}: cannot build {name!r} with {kwargs}: {type(exc).__name__}: {exc}") from None


def build_model(name: str, kwargs: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, where: str = "model") -> nn.Module:
    """Build zoo model `name`; unknown or wrongly typed kwargs are a KdistillError naming them.

    `timm:NAME` / `torchvision:NAME` build NAME from that package (imported only then),
    randomly initialised, with `num_classes` outputs; kwargs go to its constructor.
    """
    if name.partition(":")[0] in EXTERNAL_PREFIXES and ":" in name:
        return _build_external(name, kwargs, tuple(input_shape), num_classes, where)
    factory = ZOO.get(name)
    if factory is None:
        raise KdistillError(
            f"{where}.name: unknown model {name!r} (known: {', '.join(sorted(ZOO))}; "
            f"or timm:NAME, torchvision:NAME with that package installed)"
        )
    params = inspect.signature(factory).parameters
    allowed = [p for p in params if p not in _SHAPE_ARGS]
    for key in kwargs:
        if key not in allowed:
            known = f"arguments: {', '.join(allowed)}" if allowed else "it takes no arguments"
            raise KdistillError(f"{where}.{key}: not an argument of model {name!r} ({known})")
    _check_size_arguments(kwargs, where)
    try:
        with torch.device("meta"):  # count the parameters first, without allocating them
            params = count_params(factory(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs))
        if params > MAX_PARAMS:
            raise KdistillError(f"{where}: {name!r} with {kwargs} would have {params:,} parameters, more than kdistill's "
                                f"limit of {MAX_PARAMS:,}; choose smaller widths")
        return factory(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise KdistillError(f"{where}: cannot build {name!r} with {kwargs}: {exc}") from None


# Bounds on a zoo model's size arguments (a config or a model.json asking for a million layers gets one line,
# not an exhausted memory): widths, list lengths, repeat counts, and the parameter count (built on `meta` first).
MAX_PARAMS = 1_000_000_000
_MAX_WIDTH, _MAX_LIST, _MAX_REPEAT = 1 << 16, 64, 256
_REPEAT_ARGS = ("convs_per_stage", "depth", "blocks", "layers")


def _check_size_arguments(kwargs: dict[str, Any], where: str) -> None:
    for key, value in kwargs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and len(value) > _MAX_LIST:
            raise KdistillError(f"{where}.{key}: {len(value)} entries; at most {_MAX_LIST}")
        limit = _MAX_REPEAT if any(word in key for word in _REPEAT_ARGS) else _MAX_WIDTH
        for item in values:
            if isinstance(item, (int, float)) and not isinstance(item, bool) and item > limit:
                raise KdistillError(f"{where}.{key}: {item} is larger than kdistill's limit of {limit}")


def model_spec(name: str, kwargs: dict[str, Any], input_shape: tuple[int, ...], classes: list[str]) -> dict[str, Any]:
    """What `model.json` holds: enough to rebuild the architecture without the config."""
    return {"name": name, "kwargs": kwargs, "input_shape": list(input_shape), "num_classes": len(classes), "classes": classes}


def save_weights(model: nn.Module, path: Path) -> None:
    """Write the state dict as safetensors, atomically (temp file + rename)."""
    tmp = fresh_tmp(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp))
    tmp.replace(path)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights; a missing, corrupt or mismatched file is a KdistillError."""
    if not path.is_file():
        raise KdistillError(f"checkpoint not found: {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise KdistillError(f"{path}: corrupt checkpoint ({exc}); retrain or restore the file") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0:2]
        raise KdistillError(f"{path}: weights do not fit the architecture in model.json ({' '.join(first)})") from None


def load_run_model(run_dir: str | Path, weights: str = "model.safetensors") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a run's model from `model.json` and load its weights (eval mode)."""
    run_dir = Path(run_dir)
    spec_path = run_dir / "model.json"
    if not run_dir.is_dir():
        raise KdistillError(f"run directory not found: {run_dir}")
    if not spec_path.is_file():
        raise KdistillError(f"{run_dir} is not a kdistill run directory (no model.json)")
    try:
        spec = json.loads(spec_path.read_text())
        name, kwargs, shape, classes = spec["name"], spec["kwargs"], spec["input_shape"], spec["classes"]
        if not (isinstance(name, str) and isinstance(kwargs, dict) and isinstance(shape, list)
                and all(isinstance(d, int) for d in shape) and isinstance(classes, list) and classes):
            raise TypeError("name must be a string, kwargs a mapping, input_shape a list of ints, classes a non-empty list")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise KdistillError(f"{spec_path}: corrupt model description ({exc})") from None
    model = build_model(name, kwargs, tuple(shape), len(classes), where=str(spec_path))
    load_weights(model, run_dir / weights)
    return model.eval(), spec


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ZOO", "EXTERNAL_PREFIXES", "build_model", "model_spec", "save_weights", "load_weights", "load_run_model", "count_params"]
