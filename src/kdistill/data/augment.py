"""Batch augmentations on tensors (no torchvision): random crop with padding, horizontal flip.

Each takes an (N, C, H, W) batch and a torch.Generator and returns a new batch, so the
augmented views are reproducible from the generator's seed.

`normalize` is accepted in `data.augment` but does nothing here: every loader already
normalises its inputs at load time (docs/design.md, "Data sets"), so normalising again would
be wrong. The name is accepted so that configs written for other tools (torchvision-style
pipelines that list Normalize) still validate.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from kdistill.errors import KdistillError

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def random_crop(images: torch.Tensor, generator: torch.Generator, padding: int | None = None) -> torch.Tensor:
    """Zero-pad each side by `padding` (default H // 8, at least 1) and crop back at a random offset."""
    n, _, h, w = images.shape
    pad = padding if padding is not None else max(1, h // 8)
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # (N, H)
    cols = (dx[:, None] + torch.arange(w)[None, :])  # (N, W)
    batch_idx = torch.arange(n)[:, None, None]
    # gather (N, C, H, W) from padded via advanced indexing on the spatial dims
    out = padded.permute(0, 2, 3, 1)[batch_idx, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    out = images.clone()
    out[flip] = images[flip].flip(-1)
    return out


def normalize(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A no-op marker: inputs are normalised once at load time (see the module docstring)."""
    return images


AUGMENTATIONS: dict[str, Augmentation] = {"random-crop": random_crop, "hflip": hflip, "normalize": normalize}
NO_OPS = {"normalize"}


def build_augmentation(names: list[str], input_shape: tuple[int, ...]) -> Augmentation | None:
    """Compose named augmentations; they need image inputs shaped (C, H, W)."""
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
    steps = [AUGMENTATIONS[n] for n in names]

    def apply(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for step in steps:
            images = step(images, generator)
        return images

    return apply
