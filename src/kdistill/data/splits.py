"""In-memory data sets: small image/tabular data held as tensors, split train/val/test."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import torch


class Batch(NamedTuple):
    """One mini-batch: inputs, integer labels, and the samples' indices in their split."""

    inputs: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor


@dataclass
class Split:
    """Inputs (N, ...) float32 and labels (N,) int64 of one split."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class DataSplits:
    """A data set by name: its splits, class names, input shape and how it was normalised."""

    name: str
    train: Split
    val: Split
    test: Split
    classes: list[str]
    normalization: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.inputs.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Yield batches of an in-memory split; the order is drawn from `generator` when shuffling."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield Batch(split.inputs[idx], split.labels[idx], idx)
