"""The teacher's own input, when it was trained on other images than the student's (config `teacher_input`).

A teacher fine-tuned elsewhere (an ImageNet model, say) expects its own resolution, channel count and
normalisation. The student's batch (normalised by the data set's loader, docs/design.md "Data sets") is
turned into the teacher's: the data set's normalisation undone (pixels in [0, 1]), resized (bilinear,
antialiased), a single channel repeated, and normalised with the teacher's mean and std. It runs as a
forward pre-hook on the teacher's own module, so the module's names (the taps feature methods read), the
live teacher, the cache build and the report's agreement all see the same transformed input.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from kdistill.config import TeacherInput
from kdistill.errors import KdistillError


def _per_channel(values: Any, channels: int, what: str) -> torch.Tensor:
    """Scalar or per-channel values as a (1, C, 1, 1) tensor."""
    flat = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    if len(flat) not in (1, channels):
        raise KdistillError(f"teacher_input: {what} has {len(flat)} values for {channels} channels")
    return torch.tensor(flat * (channels if len(flat) == 1 else 1)).view(1, channels, 1, 1)


class TeacherInputAdapter:
    """Turns the student's (N, C, H, W) batch into the teacher's input; `describe()` is what the cache fingerprints."""

    def __init__(self, settings: TeacherInput, input_shape: tuple[int, ...], normalization: dict[str, Any]):
        if len(input_shape) != 3:
            raise KdistillError(f"teacher_input applies to images (C, H, W); the data gives {tuple(input_shape)}")
        channels, height, width = input_shape
        self.settings = settings
        self.channels = settings.channels or channels
        if self.channels != channels and channels != 1:
            raise KdistillError(f"teacher_input.channels: {self.channels} from {channels}-channel data; only a single "
                                "channel can be repeated")
        size = settings.size
        self.size = (size, size) if isinstance(size, int) else tuple(size) if size else (height, width)
        self.unnormalize = None
        if settings.mean is not None:
            if "mean" not in normalization or "std" not in normalization:
                raise KdistillError("teacher_input.mean/std: the data set records no normalisation to undo")
            self.unnormalize = (_per_channel(normalization["mean"], channels, "the data's mean"),
                                _per_channel(normalization["std"], channels, "the data's std"))
            self.normalize = (_per_channel(settings.mean, self.channels, "mean"),
                              _per_channel(settings.std, self.channels, "std"))
        self.data_normalization = {k: normalization.get(k) for k in ("scale", "mean", "std")}

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.unnormalize is not None:
            mean, std = (t.to(x.device) for t in self.unnormalize)
            x = x * std + mean
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        if self.unnormalize is not None:
            mean, std = (t.to(x.device) for t in self.normalize)
            x = (x - mean) / std
        return x.to(images.dtype)

    def describe(self) -> dict[str, Any]:
        return {**self.settings.model_dump(mode="json"), "data_normalization": self.data_normalization}


def attach_input_adapter(model: nn.Module, adapter: TeacherInputAdapter) -> RemovableHandle:
    """Every call of `model` first turns its input into the teacher's (a forward pre-hook)."""
    return model.register_forward_pre_hook(lambda module, args: (adapter(args[0]), *args[1:]))
