"""Running models without autograd: batched PyTorch inference (the model left in whatever mode the caller set)
and ONNX Runtime sessions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from kdistill.data.streaming import ImageFiles, in_chunks
from kdistill.errors import KdistillError, first_line


def predict_logits(model: nn.Module, inputs: torch.Tensor | ImageFiles, batch_size: int = 512) -> torch.Tensor:
    """Logits (float32, on the CPU) for all `inputs`, computed in chunks on the model's device under inference_mode."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    outputs = []
    with torch.inference_mode():
        for _, chunk in in_chunks(inputs, batch_size):  # streamed inputs are decoded in DataLoader workers
            outputs.append(model(chunk.to(device, non_blocking=True)).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label, over the rows with a label (negative labels, such as a
    causal LM's -100 on unscored positions, are not counted)."""
    scored = labels >= 0
    if not bool(scored.any()):
        return float("nan")
    return float((logits.argmax(-1) == labels)[scored].float().mean())


def onnx_session(path: Path, threads: int | None = None, gpu: bool = False, remedy: str = "export again"):
    """An ONNX Runtime CPU session with `threads` intra-op threads (default: torch's thread count); with `gpu`,
    on the CUDA execution provider when ONNX Runtime has it (the CPU otherwise)."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise KdistillError("onnxruntime not installed; ONNX models need the `export` extra: pip install 'kdistill[export]'")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # ONNX Runtime's threads spin after each call by default; interleaved with PyTorch in one process that
    # steals the cores PyTorch's next call needs (measured: PyTorch rows 40x slower). No spinning: fair timing.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        raise KdistillError(f"{path}: ONNX Runtime cannot load it ({first_line(exc, 200)}); {remedy}") from None
