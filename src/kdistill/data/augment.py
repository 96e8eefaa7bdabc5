"""Batch augmentations on tensors (no torchvision): random crop with padding, horizontal flip.

Each augmentation is split in two: `draw` picks its random choices for n images from a
torch.Generator (crop offsets, flip or not) as integer columns, and `apply` turns a batch and
those choices into the augmented batch. The split is what lets the teacher-output cache
store the choices of every view next to the teacher's logits, so that the student is later
shown exactly the image the teacher saw (docs/design.md, "Teacher output cache").

`normalize` is accepted in `data.augment` but does nothing here: every loader already
normalises its inputs at load time (docs/design.md, "Data sets"), so normalising again would
be wrong. The name is accepted so that configs written for other tools (torchvision-style
pipelines that list Normalize) still validate.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kdistill.errors import KdistillError


class RandomCrop:
    """Zero-pad each side by `padding` (default H // 8, at least 1) and crop back at a random offset."""

    columns = ("crop_dy", "crop_dx")

    def __init__(self, height: int, padding: int | None = None):
        self.padding = padding if padding is not None else max(1, height // 8)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        dy = torch.randint(0, 2 * self.padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * self.padding + 1, (n,), generator=generator)
        return torch.stack([dy, dx], dim=1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        pad = self.padding
        padded = F.pad(images, (pad, pad, pad, pad))
        params = params.to(images.device, torch.long)
        rows = params[:, 0, None] + torch.arange(h, device=images.device)[None, :]  # (N, H)
        cols = params[:, 1, None] + torch.arange(w, device=images.device)[None, :]  # (N, W)
        batch_idx = torch.arange(n, device=images.device)[:, None, None]
        # gather (N, C, H, W) from padded via advanced indexing on the spatial dims
        out = padded.permute(0, 2, 3, 1)[batch_idx, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()

    def describe(self) -> dict[str, Any]:
        return {"name": "random-crop", "padding": self.padding}


class HFlip:
    """Mirror each image left-right with probability 1/2."""

    columns = ("flip",)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return (torch.rand(n, generator=generator) < 0.5).long()[:, None]

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        flip = params[:, 0].to(images.device).bool()
        out = images.clone()
        out[flip] = images[flip].flip(-1)
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": "hflip"}


def random_crop(images: torch.Tensor, generator: torch.Generator, padding: int | None = None) -> torch.Tensor:
    """Random crop of a batch with choices drawn from `generator` (see RandomCrop)."""
    step = RandomCrop(images.shape[2], padding)
    return step.apply(images, step.draw(images.shape[0], generator))


def hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip of a batch with choices drawn from `generator` (see HFlip)."""
    step = HFlip()
    return step.apply(images, step.draw(images.shape[0], generator))


def normalize(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A no-op marker: inputs are normalised once at load time (see the module docstring)."""
    return images


AUGMENTATIONS = {"random-crop": random_crop, "hflip": hflip, "normalize": normalize}
NO_OPS = {"normalize"}


class Augmenter:
    """Named augmentations applied in order; `draw` then `apply` equals calling it on a generator."""

    def __init__(self, names: list[str], input_shape: tuple[int, ...]):
        self.names = list(names)
        self.steps = [RandomCrop(input_shape[1]) if name == "random-crop" else HFlip() for name in names]
        self.columns = tuple(c for step in self.steps for c in step.columns)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The random choices for n images, one int64 column per entry of `columns`."""
        return torch.cat([step.draw(n, generator) for step in self.steps], dim=1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        start = 0
        for step in self.steps:
            width = len(step.columns)
            images = step.apply(images, params[:, start:start + width])
            start += width
        return images

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.draw(images.shape[0], generator))

    def describe(self) -> list[dict[str, Any]]:
        """What the augmentation does, for the teacher cache's fingerprint."""
        return [step.describe() for step in self.steps]


def build_augmentation(names: list[str], input_shape: tuple[int, ...]) -> Augmenter | None:
    """Compose named augmentations; they need image inputs shaped (C, H, W). None when nothing is left to do."""
    if not names:
        return None
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise KdistillError(
            f"data.augment: unknown augmentation {unknown[0]!r} (known: {', '.join(AUGMENTATIONS)})"
        )
    names = [n for n in names if n not in NO_OPS]
    if not names:
        return None
    if len(input_shape) != 3:
        raise KdistillError(f"data.augment needs image inputs (C, H, W); this data set's inputs are {input_shape}")
    return Augmenter(names, input_shape)
