"""Teachers kdistill did not train: an ONNX file, a `torch.export` program, an architecture plus a weights file.

Each becomes an `nn.Module` that `teachers.FrozenTeacher` wraps like a run directory's model:

- `.onnx`: run by ONNX Runtime (on the CUDA execution provider when a GPU and that provider are there,
  else the CPU). It has no PyTorch submodules, so it serves logit methods and the cache, not feature methods.
- `.pt2` (`torch.export.save`): `torch.export.load` unpickles parts of the archive (weights stored with
  pickle, constants, and a `weights_only=False` fallback), so loading one can run code from the file;
  kdistill reads it only with `teacher_trust: true`. Its graph calls no submodules either (logit methods only).
- `{model, weights}`: the architecture built by name (zoo, `timm:`, `torchvision:`) with the data set's
  classes, and its state dict read from safetensors or `torch.load(weights_only=True)`; wrappers
  (`state_dict`, `model`, ...) and key prefixes (`module.`, `model.`, `_orig_mod.`) are removed, and
  missing, unexpected or misshapen keys are named. Feature methods read its modules as usual.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from kdistill.training.checkpoint import load_torch_file
from kdistill.errors import KdistillError, first_line
from kdistill.models.inference import onnx_session
from kdistill.models import build_model

ONNX_SUFFIX, EXPORTED_SUFFIX = ".onnx", ".pt2"
_ONNX_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64}


def _in_batches_of(run: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, size: int | None) -> torch.Tensor:
    """`run` on `inputs`, or on pieces of exactly `size` rows (the last one padded) for a graph with a fixed batch."""
    if size is None or inputs.shape[0] == size:
        return run(inputs)
    outputs = []
    for start in range(0, inputs.shape[0], size):
        piece = inputs[start : start + size]
        rows = piece.shape[0]
        if rows < size:
            piece = torch.cat([piece, piece.new_zeros((size - rows, *piece.shape[1:]))])
        outputs.append(run(piece)[:rows])
    return torch.cat(outputs)


class OnnxTeacher(nn.Module):
    """An ONNX classifier (one image input, logits as its first output) run by ONNX Runtime."""

    def __init__(self, path: Path):
        super().__init__()
        self.session = onnx_session(path, gpu=torch.cuda.is_available(), remedy="give an ONNX classifier file")
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise KdistillError(f"teacher {path}: the graph takes {len(inputs)} inputs ({names}); an image teacher takes one")
        self.input_name, self.output_name = inputs[0].name, self.session.get_outputs()[0].name
        self.input_dtype = _ONNX_TYPES.get(inputs[0].type)
        if self.input_dtype is None:
            raise KdistillError(f"teacher {path}: input {self.input_name!r} is {inputs[0].type}; a float image tensor is needed")
        first = inputs[0].shape[0] if inputs[0].shape else None
        self.fixed_batch = first if isinstance(first, int) and first > 0 else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _in_batches_of(self._run, images, self.fixed_batch).to(images.device)

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", self.input_dtype).contiguous().numpy()
        logits = self.session.run([self.output_name], {self.input_name: array})[0]
        return torch.from_numpy(logits).float()


class ExportedTeacher(nn.Module):
    """A `torch.export` program's module. Its train/eval mode was fixed when it was exported (export after
    `model.eval()`), so `train()` and `eval()` only set this wrapper's flag."""

    def __init__(self, program: Any):
        super().__init__()
        self.program = program.module()
        for module in self.program.modules():
            module.training = False  # GraphModule.eval() raises; the exported graph ignores the flag anyway
        self.fixed_batch = _fixed_batch(program)

    def train(self, mode: bool = True) -> "ExportedTeacher":
        self.training = mode
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _in_batches_of(self.program, images, self.fixed_batch)


def _fixed_batch(program: Any) -> int | None:
    """The batch size a program was exported with when its batch axis is static, else None."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            value = node.meta.get("val")
            size = value.shape[0] if value is not None and value.dim() else None
            return size if isinstance(size, int) else None
    return None


def load_onnx_teacher(path: Path) -> nn.Module:
    return OnnxTeacher(path)


def load_exported_teacher(path: Path, trust: bool) -> nn.Module:
    if not trust:
        raise KdistillError(f"teacher {path}: loading a torch.export program can run code stored in the file "
                            "(torch.export.load unpickles parts of it); set teacher_trust: true if you trust where it "
                            "came from, or give the teacher as an ONNX file or as {model, weights}")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign archive raises many types
        raise KdistillError(f"teacher {path}: not a program torch.export.load can read ({first_line(exc, 160)})") from None
    return ExportedTeacher(program)


STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "state_dict_ema", "model_ema")
KEY_PREFIXES = ("module.", "model.", "_orig_mod.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a PyTorch file (`weights_only=True`), wrappers such as
    `{"state_dict": ...}` (Lightning, timm's train script, DDP checkpoints) removed."""
    if not path.is_file():
        raise KdistillError(f"teacher.weights: file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise KdistillError(f"teacher.weights {path}: not a readable safetensors file ({first_line(exc, 120)})") from None
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise KdistillError(f"teacher.weights {path}: not a readable PyTorch file (neither a torch.save archive nor "
                            ".safetensors)")
    state: Any = load_torch_file(path, "teacher weights file")
    while isinstance(state, dict):
        wrapper = next((k for k in STATE_DICT_WRAPPERS if isinstance(state.get(k), dict)), None)
        if wrapper is None or all(isinstance(v, torch.Tensor) for v in state.values()):
            break
        state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KdistillError(f"teacher.weights {path}: not a state dict (a mapping of names to tensors)")
    return state


def _strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Remove a prefix every key shares (`module.` from DDP, `model.` from Lightning...) while that helps."""
    while not set(state) & expected:
        prefix = next((p for p in KEY_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _named(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_weights_teacher(name: str, kwargs: dict[str, Any], weights: Path, input_shape: tuple[int, ...],
                         num_classes: int) -> nn.Module:
    """Architecture `name` (with `num_classes` outputs for `input_shape` images) holding the weights in `weights`."""
    model = build_model(name, kwargs, input_shape, num_classes, where="teacher.model")
    expected = model.state_dict()
    state = _strip_prefixes(read_state_dict(weights), set(expected))
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"missing {_named(missing)}" if missing else "", f"unexpected {_named(unexpected)}" if unexpected else ""]
        raise KdistillError(f"teacher.weights {weights} does not fit {name!r}: " + "; ".join(p for p in parts if p))
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise KdistillError(f"teacher.weights {weights}: {key} has shape {tuple(tensor.shape)}, {name!r} built for "
                                f"{num_classes} classes and inputs {tuple(input_shape)} expects {tuple(expected[key].shape)}")
    model.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent (older BatchNorm files)
    return model.eval()
