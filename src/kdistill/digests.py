"""Content hashes (SHA-256) that identify what a run or a cache was built from: files, tensors, model weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch


def file_sha256(path: Path) -> str:
    """A file's hash, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensors_sha256(*tensors: torch.Tensor) -> str:
    """The hash of CPU tensors in order, each with its dtype and shape (a data split's identity)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        array = np.ascontiguousarray(tensor.numpy())
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """The hash of a model's weights: names, shapes, dtypes and values, in state-dict order (no copy of the values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(array.shape)}{array.dtype}".encode())
        if array.numel():
            digest.update(memoryview(array.view(torch.uint8).numpy()))
    return digest.hexdigest()
