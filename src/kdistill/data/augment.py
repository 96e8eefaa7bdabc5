"""Batch augmentations on tensors (no torchvision): random crop with padding, horizontal flip, and mixing
each image with a partner (mixup, cutmix).

Each augmentation is split in two: `draw` picks its random choices for n images from a
torch.Generator (crop offsets, flip or not) as integer columns, and `apply` turns a batch and
those choices into the augmented batch. The split is what lets the teacher-output cache
store the choices of every view next to the teacher's logits, so that the student is later
shown exactly the image the teacher saw (docs/design.md, "Teacher output cache").

`mixup` (Zhang et al., ICLR 2018) and `cutmix` (Yun et al., ICCV 2019) come last: each (cropped, flipped)
image is mixed with a partner's, the partner drawn as a permutation (of the batch when the teacher runs
live, of the whole training split in the teacher cache, which stores each view's partner and mixing
parameters beside its crop and flip). Consistent teaching (Beyer et al., CVPR 2022, "function matching")
is the cached case: the student sees exactly the mixed image the teacher labelled. A mixed batch carries
(partner labels, lambda), and the label term becomes lambda·CE(label) + (1 − lambda)·CE(partner's label).

`normalize` is accepted in `data.augment` but does nothing here: every loader already
normalises its inputs at load time (docs/design.md, "Data sets"), so normalising again would
be wrong. The name is accepted so that configs written for other tools (torchvision-style
pipelines that list Normalize) still validate.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
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


class Mix:
    """Mixup or CutMix of each image with a partner: lambda ~ Beta(alpha, alpha), applied with `probability`
    (otherwise lambda = 1, the image itself). CutMix pastes the partner's box of area (1 − lambda) · H · W
    (clipped at the border; lambda is then the exact share of the image's own pixels)."""

    columns = ("partner", "lam", "y0", "x0", "y1", "x1")

    def __init__(self, kind: str, alpha: float, probability: float, height: int, width: int):
        self.kind, self.alpha, self.probability = kind, alpha, probability
        self.height, self.width = height, width

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 6) float64: a partner (a permutation of 0..n-1), lambda and the pasted box of each image."""
        partner = torch.randperm(n, generator=generator).double()
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        lam = rng.beta(self.alpha, self.alpha, n)
        lam[rng.random(n) >= self.probability] = 1.0
        box = np.zeros((n, 4))
        if self.kind == "cutmix":
            cut = np.sqrt(1.0 - lam)
            ch, cw = (cut * self.height).astype(int), (cut * self.width).astype(int)
            cy, cx = rng.integers(0, self.height, n), rng.integers(0, self.width, n)
            box = np.stack([np.clip(cy - ch // 2, 0, self.height), np.clip(cx - cw // 2, 0, self.width),
                            np.clip(cy + ch - ch // 2, 0, self.height), np.clip(cx + cw - cw // 2, 0, self.width)], 1)
            lam = 1.0 - (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) / (self.height * self.width)
        return torch.cat([partner[:, None], torch.from_numpy(lam)[:, None], torch.from_numpy(box).double()], dim=1)

    def apply(self, images: torch.Tensor, partners: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Each image mixed with its partner's image (`partners[i]` goes with `images[i]`)."""
        params = params.to(images.device)
        if self.kind == "mixup":
            lam = params[:, 1].to(images.dtype).view(-1, 1, 1, 1)
            return lam * images + (1 - lam) * partners
        rows = torch.arange(images.shape[2], device=images.device).view(1, -1, 1)
        cols = torch.arange(images.shape[3], device=images.device).view(1, 1, -1)
        y0, x0, y1, x1 = (params[:, i].long().view(-1, 1, 1) for i in range(2, 6))
        inside = ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)).unsqueeze(1)  # (N, 1, H, W)
        return torch.where(inside, partners, images)

    def describe(self) -> dict[str, Any]:
        return {"name": self.kind, "alpha": self.alpha, "probability": self.probability}


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


AUGMENTATIONS = {"random-crop": random_crop, "hflip": hflip, "normalize": normalize, "mixup": None, "cutmix": None}
NO_OPS = {"normalize"}
MIXES = ("mixup", "cutmix")
MIX_DEFAULTS = {"alpha": 1.0, "probability": 1.0}


class Augmenter:
    """Named per-image augmentations applied in order (`draw` then `apply` equals calling it on a generator),
    then optionally a Mix (`mix`), which needs each image's partner."""

    def __init__(self, names: list[str], input_shape: tuple[int, ...], mix: Mix | None = None):
        self.names = list(names)
        self.steps = [RandomCrop(input_shape[1]) if name == "random-crop" else HFlip() for name in names]
        self.columns = tuple(c for step in self.steps for c in step.columns)
        self.mix = mix

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The random choices for n images, one int64 column per entry of `columns`."""
        if not self.steps:
            return torch.zeros(n, 0, dtype=torch.long)
        return torch.cat([step.draw(n, generator) for step in self.steps], dim=1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        start = 0
        for step in self.steps:
            width = len(step.columns)
            images = step.apply(images, params[:, start:start + width])
            start += width
        return images

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The per-image steps only (a Mix needs the batch's labels: `augment_batch`)."""
        return self.apply(images, self.draw(images.shape[0], generator))

    def augment_batch(self, batch: Any, generator: torch.Generator) -> Any:
        """A Batch augmented image by image, then (with a Mix) mixed within itself: partners are a permutation
        of the batch, and the batch carries (partner labels, lambda) for the label term."""
        images = self(batch.inputs, generator) if self.steps else batch.inputs
        if self.mix is None:
            return batch._replace(inputs=images)
        params = self.mix.draw(images.shape[0], generator)
        partner = params[:, 0].long()
        return batch._replace(inputs=self.mix.apply(images, images[partner], params),
                              mixed=(batch.labels[partner], params[:, 1].float()))

    def describe(self) -> list[dict[str, Any]]:
        """What the augmentation does, for the teacher cache's fingerprint."""
        return [step.describe() for step in self.steps] + ([self.mix.describe()] if self.mix is not None else [])


def _entry(entry: Any, i: int) -> tuple[str, dict[str, float]]:
    """(name, mixing parameters) of one `data.augment` entry: a name, or {name: mixup|cutmix, alpha, probability}."""
    if isinstance(entry, str):
        return entry, dict(MIX_DEFAULTS) if entry in MIXES else {}
    name = entry.get("name") if isinstance(entry, dict) else None
    if name not in MIXES:
        raise KdistillError(f"data.augment[{i}]: a mapping names a mix, e.g. {{name: mixup, alpha: 0.2, probability: 1.0}}")
    extra = sorted(set(entry) - {"name", *MIX_DEFAULTS})
    if extra:
        raise KdistillError(f"data.augment[{i}]: unknown key {extra[0]!r} of {name} (keys: alpha, probability)")
    params = {k: entry.get(k, v) for k, v in MIX_DEFAULTS.items()}
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in params.values()) \
            or params["alpha"] <= 0 or not 0 < params["probability"] <= 1:
        raise KdistillError(f"data.augment[{i}]: {name} needs alpha > 0 and 0 < probability <= 1 (got {params})")
    return name, {k: float(v) for k, v in params.items()}


def build_augmentation(names: list[Any], input_shape: tuple[int, ...]) -> Augmenter | None:
    """Compose named augmentations; they need image inputs shaped (C, H, W). None when nothing is left to do."""
    if not names:
        return None
    entries = [_entry(entry, i) for i, entry in enumerate(names)]
    unknown = [n for n, _ in entries if n not in AUGMENTATIONS]
    if unknown:
        raise KdistillError(
            f"data.augment: unknown augmentation {unknown[0]!r} (known: {', '.join(AUGMENTATIONS)})"
        )
    mixes = [i for i, (n, _) in enumerate(entries) if n in MIXES]
    if len(mixes) > 1 or (mixes and mixes[0] != len(entries) - 1):
        raise KdistillError("data.augment: one mix (mixup or cutmix), last in the list: it mixes the augmented images")
    steps = [n for n, _ in entries if n not in NO_OPS and n not in MIXES]
    if not steps and not mixes:
        return None
    if len(input_shape) != 3:
        raise KdistillError(f"data.augment needs image inputs (C, H, W); this data set's inputs are {input_shape}")
    mix = None
    if mixes:
        name, params = entries[mixes[0]]
        mix = Mix(name, params["alpha"], params["probability"], input_shape[1], input_shape[2])
    return Augmenter(steps, input_shape, mix)
