"""The Python API: `kdistill.train` and `kdistill.distill` on a user's own `nn.Module`s and torch Datasets.

They build the same config a YAML file would give (`config=` takes the same keys, e.g.
`{"train": {"lr": 3e-3}, "data": {"augment": ["hflip"]}}`), and run the same engine, run directory, resume,
teacher cache, methods and checks as `kdistill train` / `kdistill distill`; a bad input raises
`KdistillError` (one line) instead of exiting. A Dataset is read once into tensors (it must yield
`(image tensor, integer label)`, or give `(inputs, labels)` tensors directly); its content hash is part of
the run's data name, so a run directory is resumed only on the very same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdistill.training import distributed, threads
from kdistill.config import DistillRunConfig, TrainRunConfig, validate_config
from kdistill.data.splits import DataSplits, Split
from kdistill.data.transfer import UNLABELED
from kdistill.digests import tensors_sha256, weights_sha256
from kdistill.training.engine import resolve_device, seed_everything
from kdistill.errors import KdistillError, first_line
from kdistill.models import build_model, load_weights, model_spec
from kdistill.training.checkpoint import BEST
from kdistill.runner import distill_setup, distill_student, train_model
from kdistill.training.teachers import FrozenTeacher, check_teacher_on_data

TensorPair = tuple[torch.Tensor, torch.Tensor]
DataLike = Dataset | TensorPair
MEMORY_LIMIT_MB = 4096  # what a Dataset may take as tensors (streaming from disk is the CLI's data.in_memory: false)


@dataclass
class Run:
    """A finished run: its directory, its report.json row, and its best model (CPU, eval mode)."""

    out: Path
    report: dict[str, Any]
    model: nn.Module


def _as_tensors(data: DataLike, what: str, memory_limit_mb: int) -> TensorPair:
    """(inputs float32 (N, ...), labels int64 (N,)) from a tensor pair or a Dataset of (input, label)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, labels = data
    elif isinstance(data, Dataset):
        try:
            count = len(data)  # type: ignore[arg-type]
            first = data[0]
        except (TypeError, IndexError) as exc:
            raise KdistillError(f"{what}: a map-style Dataset with at least one item is needed ({exc})") from None
        if not (isinstance(first, (tuple, list)) and len(first) >= 2 and isinstance(first[0], torch.Tensor)):
            raise KdistillError(f"{what}: items must be (image tensor, label) pairs, got {type(first).__name__}")
        size_mb = count * first[0].numel() * 4 / 2**20
        if size_mb > memory_limit_mb:
            raise KdistillError(f"{what}: {count:,} items of {tuple(first[0].shape)} are {size_mb:,.0f} MB as tensors, "
                                f"more than memory_limit_mb={memory_limit_mb}; raise it, or train from disk with the CLI")
        inputs_list, labels_list = [], []
        try:
            for batch_inputs, batch_labels, *_ in DataLoader(data, batch_size=256, shuffle=False):
                inputs_list.append(batch_inputs)
                labels_list.append(torch.as_tensor(batch_labels))
        except (RuntimeError, TypeError, ValueError) as exc:  # items of other shapes, labels that are not numbers
            raise KdistillError(f"{what}: its items cannot be batched: inputs must share one shape and labels be "
                                f"integers ({first_line(exc, 160)})") from None
        inputs, labels = torch.cat(inputs_list), torch.cat(labels_list)
    else:
        raise KdistillError(f"{what}: give a torch Dataset of (input, label) or an (inputs, labels) pair of tensors, "
                            f"not {type(data).__name__}")
    if inputs.shape[0] != labels.shape[0] or labels.dim() != 1:
        raise KdistillError(f"{what}: {inputs.shape[0]} inputs and labels of shape {tuple(labels.shape)}; one label per input")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise KdistillError(f"{what}: labels must be integer class indices, got {labels.dtype}")
    inputs = inputs.float()
    if not torch.isfinite(inputs).all():
        raise KdistillError(f"{what}: the inputs hold NaN or infinite values")
    return inputs, labels.long()


def dataset_splits(train: DataLike, val: DataLike, test: DataLike | None = None, classes: Sequence[str] | None = None,
                   memory_limit_mb: int = MEMORY_LIMIT_MB) -> DataSplits:
    """A DataSplits of the user's data; without `test`, the report is on `val`. Classes: `classes`, the
    train Dataset's `.classes` (torchvision's convention), or "0".."C-1"."""
    parts = {name: _as_tensors(part, name, memory_limit_mb) for name, part in (("train", train), ("val", val),
                                                                               ("test", test if test is not None else val))}
    shapes = {name: tuple(inputs.shape[1:]) for name, (inputs, _) in parts.items()}
    if len(set(shapes.values())) != 1:
        raise KdistillError(f"train, val and test inputs differ in shape: {shapes}")
    names = list(classes if classes is not None else getattr(train, "classes", None) or [])
    top = max(int(labels.max()) for _, labels in parts.values() if labels.numel()) + 1
    names = [str(c) for c in names] or [str(i) for i in range(top)]
    for name, (_, labels) in parts.items():
        lowest = UNLABELED if name == "train" else 0  # train may hold unlabelled transfer data (-1)
        if labels.numel() and (int(labels.min()) < lowest or int(labels.max()) >= len(names)):
            raise KdistillError(f"{name}: labels run from {int(labels.min())} to {int(labels.max())}, outside the "
                                f"{len(names)} classes 0..{len(names) - 1}"
                                + (" (-1 marks an unlabelled training sample)" if name == "train" else ""))
    digest = tensors_sha256(*parts["train"], *parts["val"], *parts["test"])[:16]
    splits = {name: Split(inputs, labels) for name, (inputs, labels) in parts.items()}
    return DataSplits(name=f"python-{digest}", classes=names, **splits)


def _model_spec(model: nn.Module | dict[str, Any], where: str) -> dict[str, Any]:
    """A config's model spec for a user's nn.Module (`python:module.Class`, not buildable from the config) or a
    zoo spec such as {"name": "cnn", "channels": [16, 32]}."""
    if isinstance(model, nn.Module):
        return {"name": f"python:{type(model).__module__}.{type(model).__qualname__}"}
    if isinstance(model, dict) and isinstance(model.get("name"), str):
        return dict(model)
    raise KdistillError(f"{where}: give an nn.Module or a zoo model spec such as {{'name': 'cnn'}}")


def _built(model: nn.Module | dict[str, Any], cfg_spec: Any, data: DataSplits, where: str) -> tuple[nn.Module, dict]:
    """The module to train (built now, after seeding, for a zoo spec) and its model.json."""
    spec = model_spec(cfg_spec.name, cfg_spec.kwargs(), data.input_shape, data.classes)
    if isinstance(model, nn.Module):
        return model, spec
    return build_model(cfg_spec.name, cfg_spec.kwargs(), data.input_shape, data.num_classes, where=where), spec


def _config(kind: type, data: DataSplits, out: str | Path, epochs: int, seed: int, name: str | None,
            config: dict[str, Any] | None, **sections: Any) -> Any:
    """The run config the arguments amount to (`config` holds any other key, as in a YAML file)."""
    raw = dict(config or {})
    for key in ("data", "train"):
        raw[key] = dict(raw.get(key) or {})
    loader_only = sorted(set(raw["data"]) - {"batch_size", "eval_batch_size", "augment"})
    if loader_only:  # read by the data set loaders, which Python data does not go through
        raise KdistillError(f"config: data.{loader_only[0]} applies to data sets kdistill loads, not to the Datasets "
                            "given in Python (slice or transform them yourself); data takes batch_size, "
                            "eval_batch_size and augment here")
    raw["data"]["name"] = data.name
    raw["train"].setdefault("epochs", epochs)
    raw.setdefault("seed", seed)
    if "distill" in sections:
        raw["distill"] = {**sections.pop("distill"), **dict(raw.get("distill") or {})}
    raw.update(name=name or Path(out).name, out=str(out), **sections)
    return validate_config(raw, kind, source="kdistill API config")


@threads.counted
def train(model: nn.Module | dict[str, Any], train: DataLike, val: DataLike, *, out: str | Path,
          test: DataLike | None = None, epochs: int = 20, seed: int = 0, role: str = "student",
          classes: Sequence[str] | None = None, config: dict[str, Any] | None = None, overwrite: bool = False,
          progress: bool = True, name: str | None = None, memory_limit_mb: int = MEMORY_LIMIT_MB) -> Run:
    """Train `model` on labels only (a teacher, or the student alone that a distilled one is compared with)."""
    data = dataset_splits(train, val, test, classes, memory_limit_mb)
    cfg = _config(TrainRunConfig, data, out, epochs, seed, name, config, role=role, model=_model_spec(model, "model"))
    distributed.init_from_env(resolve_device(cfg.train.device))
    seed_everything(cfg.seed)
    module, spec = _built(model, cfg.model, data, "model")
    row = train_model(cfg, module, spec, data, overwrite=overwrite, progress=progress)
    return _finished(cfg, module, row)


@threads.counted
def distill(teacher: nn.Module | Any, student: nn.Module | dict[str, Any], train: DataLike, val: DataLike, *,
            out: str | Path, test: DataLike | None = None, method: str = "kd", epochs: int = 20, seed: int = 0,
            classes: Sequence[str] | None = None, config: dict[str, Any] | None = None, overwrite: bool = False,
            progress: bool = True, name: str | None = None, memory_limit_mb: int = MEMORY_LIMIT_MB,
            **method_params: Any) -> Run:
    """Distil `teacher` (a trained nn.Module, or anything a config's `teacher:` takes: a run directory, an ONNX
    file, {"model": ..., "weights": ...}) into `student` with `method` and its hyperparameters (`temperature=4`)."""
    data = dataset_splits(train, val, test, classes, memory_limit_mb)
    given_module = isinstance(teacher, nn.Module)
    cfg = _config(DistillRunConfig, data, out, epochs, seed, name, config, student=_model_spec(student, "student"),
                  teacher=None if given_module else teacher, distill={"method": method, **method_params})
    distributed.init_from_env(resolve_device(cfg.train.device))
    data, frozen, chosen = distill_setup(cfg, data=data, teacher=_module_teacher(teacher, data) if given_module else None)
    seed_everything(cfg.seed)
    module, spec = _built(student, cfg.student, data, "student")
    row = distill_student(cfg, module, spec, chosen, frozen, data, overwrite=overwrite, progress=progress)
    return _finished(cfg, module, row)


def _module_teacher(model: nn.Module, data: DataSplits) -> FrozenTeacher:
    """A user's trained nn.Module as a frozen teacher (eval mode, no gradients), checked against the data."""
    name = f"python:{type(model).__module__}.{type(model).__qualname__}"
    teacher = FrozenTeacher(model, {"name": name, "kwargs": {}, "classes": data.classes,
                                    "input_shape": list(data.input_shape)}, weights_sha256=weights_sha256(model))
    teacher.notes = check_teacher_on_data(teacher, data)
    return teacher


def _finished(cfg: Any, module: nn.Module, row: dict[str, Any]) -> Run:
    out = cfg.out_dir()
    if distributed.current().is_main:
        load_weights(module, out / BEST)
    return Run(out=out, report=row, model=module.cpu().eval())
