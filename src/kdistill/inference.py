"""Batched inference helpers (no autograd, model left in whatever mode the caller set)."""

from __future__ import annotations

import torch
from torch import nn

from kdistill.data.streaming import ImageFiles, in_chunks


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
    """Fraction of rows whose argmax equals the label."""
    if labels.numel() == 0:
        return float("nan")
    return float((logits.argmax(-1) == labels).float().mean())
