"""Teachers: frozen models that only ever run inference."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.config import TeacherInput, TeacherRef, TeacherWeights
from kdistill.data.splits import DataSplits
from kdistill.data.streaming import take
from kdistill.digests import file_sha256
from kdistill.errors import KdistillError, first_line
from kdistill.training.rundir import write_owned_text
from kdistill.models import load_run_model
from kdistill.training.teacher_files import EXPORTED_SUFFIX, ONNX_SUFFIX, load_exported_teacher, load_onnx_teacher, load_weights_teacher
from kdistill.training.teacher_input import TeacherInputAdapter, attach_input_adapter


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
        self.sources = [source] if source else []  # every run directory or file it was loaded from (ensembles: several)
        self.kind = "module"  # run | onnx | pt2 | weights | ensemble (set by load_teacher); module: given in Python
        self.run_dir: str | None = None  # the kdistill run directory it came from (where its cache lives by default)
        self.has_modules = True  # False for ONNX and torch.export graphs: no submodules to hook (feature methods)
        self.notes: list[str] = []  # what the checks against the data found (accuracy, warnings), printed once

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


def load_teacher(ref: TeacherRef | list[TeacherRef], precision: str = "fp32", *, data: DataSplits | None = None,
                 teacher_input: TeacherInput | None = None, trust: bool = False) -> FrozenTeacher:
    """The teacher a config names: a kdistill run directory (model.json + model.safetensors), an ONNX file, a
    `torch.export` program (only with `trust`), `{model, weights}` (kdistill.training.teacher_files), or a list of these
    (an ensemble: same classes and input shape, logits averaged). `data` (the data set the student trains on)
    is needed for `{model, weights}` and `teacher_input`; `teacher_input` applies to every member."""
    if isinstance(ref, (list, tuple)):
        if not ref:
            raise KdistillError("teacher: an empty list; give a run directory or a list of them")
        members = [load_teacher(one, precision, data=data, teacher_input=teacher_input, trust=trust) for one in ref]
        return members[0] if len(members) == 1 else _ensemble(members, precision)
    adapter = None
    if teacher_input is not None:
        if data is None:
            raise ValueError("teacher_input needs the data set")
        adapter = TeacherInputAdapter(teacher_input, data.input_shape, data.normalization)
    teacher = _load_one(ref, precision, data, adapter.output_shape if adapter else None, trust)
    if adapter is not None:
        attach_input_adapter(teacher.model, adapter)
        teacher.spec["teacher_input"] = adapter.describe()
    return teacher


def _ensemble(members: list[FrozenTeacher], precision: str) -> FrozenTeacher:
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
    teacher.kind = "ensemble"
    teacher.run_dir = first.run_dir if all(m.run_dir for m in members) else None
    teacher.has_modules = all(m.has_modules for m in members)
    return teacher


def _load_one(ref: TeacherRef, precision: str, data: DataSplits | None, adapted_shape: tuple[int, ...] | None,
              trust: bool) -> FrozenTeacher:
    """One teacher, in whichever form `ref` gives it."""
    classes = data.classes if data is not None else []
    if isinstance(ref, TeacherWeights):
        if data is None:
            raise ValueError("a {model, weights} teacher needs the data set")
        weights = Path(ref.weights)
        shape = adapted_shape or data.input_shape
        model = load_weights_teacher(ref.model.name, ref.model.kwargs(), weights, shape, data.num_classes)
        spec = {"name": ref.model.name, "kwargs": ref.model.kwargs(), "input_shape": list(shape), "classes": classes}
        return _external(model, spec, weights, "weights", precision, has_modules=True)
    path = Path(ref)
    if path.suffix in (ONNX_SUFFIX, EXPORTED_SUFFIX):
        if not path.is_file():
            raise KdistillError(f"teacher: file not found: {path}")
        kind = "onnx" if path.suffix == ONNX_SUFFIX else "pt2"
        if kind == "onnx" and precision != "fp32":
            raise KdistillError(f"distill.teacher_precision={precision}: an ONNX teacher ({path}) runs in ONNX Runtime "
                                "in the precision it was exported in; use fp32")
        model = load_onnx_teacher(path) if kind == "onnx" else load_exported_teacher(path, trust)
        spec = {"name": kind, "kwargs": {}, "file": str(path), "classes": classes}
        return _external(model, spec, path, kind, precision, has_modules=False)
    if not path.exists():
        raise KdistillError(f"teacher: run directory not found: {path}")
    if not (path / "model.json").is_file():
        raise KdistillError(f"teacher: {path} is not a kdistill run directory (no model.json), an ONNX file (.onnx) "
                            "or a torch.export program (.pt2); train one with `kdistill train`, or give "
                            "{model: {name: ...}, weights: FILE}")
    model, spec = load_run_model(path)
    teacher = FrozenTeacher(model, spec, source=str(path), weights_sha256=file_sha256(path / "model.safetensors"),
                            precision=precision)
    teacher.kind, teacher.run_dir = "run", str(path)
    return teacher


def _external(model: nn.Module, spec: dict[str, Any], file: Path, kind: str, precision: str,
              has_modules: bool) -> FrozenTeacher:
    teacher = FrozenTeacher(model, spec, source=str(file), weights_sha256=file_sha256(file), precision=precision)
    teacher.kind, teacher.has_modules = kind, has_modules
    return teacher


def check_trained_on(spec: dict[str, Any], data: DataSplits, who: str, input_shape: tuple[int, ...] | None = None,
                     hint: str = "") -> None:
    """A kdistill-trained model (its model.json spec) must predict the data set's classes from `input_shape`
    (default: the data's own; a teacher's after teacher_input). `hint` ends the input-shape error."""
    classes = list(spec.get("classes") or [])
    if len(classes) != data.num_classes:
        raise KdistillError(f"{who} predicts {len(classes)} classes but data set {data.name!r} has "
                            f"{data.num_classes}; use a model trained on the same classes")
    if classes != data.classes:
        raise KdistillError(f"{who} was trained on classes {classes[:5]}... that differ from {data.name!r}'s {data.classes[:5]}...")
    wanted = tuple(input_shape or data.input_shape)
    shape = tuple(spec.get("input_shape", ()))
    if shape != wanted:
        after = " after teacher_input" if wanted != tuple(data.input_shape) else ""
        raise KdistillError(f"{who} takes inputs {shape} but data set {data.name!r} gives {wanted}{after}{hint}")


def teacher_input_shape(teacher: FrozenTeacher, data: DataSplits) -> tuple[int, ...]:
    """The input shape the teacher sees: the data's, or what teacher_input turns it into."""
    adapted = teacher.spec.get("teacher_input")
    if not adapted:
        return tuple(data.input_shape)
    size = adapted.get("size") or list(data.input_shape[1:])
    size = [size, size] if isinstance(size, int) else list(size)
    return (adapted.get("channels") or data.input_shape[0], *size)


def check_teacher_on_data(teacher: FrozenTeacher, data: DataSplits) -> list[str]:
    """The teacher must take the data set's images and give one logit per class, whatever its form. A run
    directory's model must also have been trained on the same classes; a teacher from a file must give each
    image the same logits whatever else is in its batch (a graph exported in training mode would not), and its
    accuracy on validation samples is printed, with a warning near chance (are its outputs in the data's
    class order?). Returns those lines, for the run to print once every other check has passed."""
    who = f"teacher {teacher.source or teacher.spec.get('name')}"
    trained = teacher.run_dir is not None  # a kdistill run directory, or an ensemble of them only
    if trained:
        check_trained_on(teacher.spec, data, who, teacher_input_shape(teacher, data),
                         hint="; set teacher_input (size, channels, mean, std) to what it takes")
    param = next(iter(teacher.model.parameters()), None)
    probe = data.train.inputs[:2].to(param.device if param is not None else "cpu")
    try:
        logits = teacher(probe)
    except Exception as exc:  # noqa: BLE001 - a foreign graph fails in its runtime's own exception types
        raise KdistillError(f"{who} cannot take {data.name!r}'s inputs {data.input_shape}: {first_line(exc, 200)}; set "
                            "teacher_input (size, channels, mean, std) to what it was trained on") from None
    if tuple(logits.shape) != (probe.shape[0], data.num_classes):
        raise KdistillError(f"{who} gives outputs of shape {tuple(logits.shape[1:])} per image, but data set "
                            f"{data.name!r} has {data.num_classes} classes (one logit per class is needed)")
    if trained:
        return []
    alone = torch.cat([teacher(probe[i : i + 1]) for i in range(probe.shape[0])])
    if not torch.allclose(alone, logits, rtol=1e-4, atol=1e-4):
        raise KdistillError(f"{who} gives an image other logits when other images share its batch (BatchNorm in "
                            "training mode, or dropout?); export or save the model after model.eval()")
    val = data.split("val")
    count = min(len(val), 512)
    if not count:
        return []
    # A seeded sample of the whole split: validation data is often sorted by class, and the first rows would
    # test a few classes only (a teacher in another class order could pass on them).
    rows = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:count].sort().values
    outputs = teacher(take(val.inputs, rows)[:].to(probe.device)).float().cpu()
    correct = (outputs.argmax(-1) == val.labels[rows]).float().mean().item()
    notes = [f"kdistill: {who}: {correct:.1%} on {count} validation samples"]
    if bool((outputs >= 0).all()) and torch.allclose(outputs.sum(-1), torch.ones(count), atol=1e-3):
        notes.append(f"kdistill: warning: {who} outputs probabilities (each row is non-negative and sums to 1), "
                     "not logits; distillation softens them again and learns from a nearly uniform target: export the "
                     "model without its final softmax")
    if correct <= 1.5 / data.num_classes:
        notes.append(f"kdistill: warning: {who} does no better than chance ({1 / data.num_classes:.1%}) on the "
                     f"validation samples: are its outputs in the data set's class order ({', '.join(data.classes[:4])}, "
                     "...), and its input normalised as it was trained (teacher_input)?")
    return notes


TEACHER_RECORD = "teacher.json"


def record_teacher(run_dir: Path, teacher: FrozenTeacher) -> None:
    """Remember which teacher (absolute path + weights hash) a distilled run learns from."""
    paths = [os.path.abspath(source) for source in teacher.sources]
    record = {"path": paths[0] if len(paths) == 1 else paths or None, "weights_sha256": teacher.weights_sha256}
    if not paths:  # an nn.Module given in Python (kdistill.distill)
        record["model"] = teacher.spec.get("name")
    write_owned_text(Path(run_dir), TEACHER_RECORD, json.dumps(record, indent=2) + "\n")


def recorded_teacher(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / TEACHER_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KdistillError(f"{path}: corrupt teacher record") from None


def print_notes(teacher: FrozenTeacher | None) -> None:
    """Print (once) what `check_teacher_on_data` found, when the run is past every check of the user's input."""
    if teacher is not None:
        for note in teacher.notes:
            print(note, file=sys.stderr)
        teacher.notes = []


def check_same_teacher(run_dir: Path, teacher: FrozenTeacher) -> None:
    """A run resumed or evaluated with a teacher whose weights changed would silently mix two teachers: refuse."""
    record = recorded_teacher(run_dir)
    if record and teacher.weights_sha256 and record.get("weights_sha256") != teacher.weights_sha256:
        raise KdistillError(
            f"teacher {teacher.source} has different weights from the one {run_dir} was distilled from "
            f"(sha256 {str(record.get('weights_sha256'))[:12]}... vs {teacher.weights_sha256[:12]}...); "
            "retrain the student with --overwrite, or restore that teacher"
        )
