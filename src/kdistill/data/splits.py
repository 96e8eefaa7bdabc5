"""Data sets split train/val/test: inputs held as tensors, or (streamed) as image files decoded per batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

from kdistill.data.streaming import ImageFiles, is_streamed


class Batch(NamedTuple):
    """One mini-batch: inputs, integer labels (-1: unlabelled, kdistill.data.transfer), and the samples' indices
    in their split. `labeled_share` is the share of the global batch (all processes together) that carries
    labels, set by the engine; label terms divide their sum by (samples here x labeled_share), which is the
    mean over the global batch's labelled samples once the processes' gradients are averaged. None: this
    batch's own share (the mean over its labelled samples)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    labeled_share: float | None = None
    mixed: tuple[torch.Tensor, torch.Tensor] | None = None  # (partner labels, lambda) of mixup / cutmix images
    attention_mask: torch.Tensor | None = None  # text: (B, L), 1 for a real token, 0 for padding

    def label_weights(self) -> torch.Tensor:
        """Each sample's weight in the label term: 1 if labelled, else 0; for a mixed image, lambda for its own
        label and 1 - lambda for its partner's, each counted only when that label exists."""
        own = (self.labels >= 0).float()
        if self.mixed is None:
            return own
        partner_labels, lam = self.mixed
        lam = lam.to(own.device)
        return lam * own + (1 - lam) * (partner_labels.to(own.device) >= 0).float()


@dataclass
class Split:
    """Inputs (N, ...) float32 and labels (N,) int64 of one split; inputs may be ImageFiles (streamed)."""

    inputs: torch.Tensor | ImageFiles
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
    notes: list[str] = field(default_factory=list)  # what loading found (in memory or streamed), printed by the run

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
    rows: Callable[[int], slice] | None = None,
) -> Iterator[Batch]:
    """Yield batches of a split; the order is drawn from `generator` when shuffling.

    A streamed split is decoded from disk in DataLoader workers, in this same order. `rows(n)` names the
    rows of an n-sample batch this process needs (under torchrun, those its slice is made from): only they
    are decoded, and the other rows of the batch are zeros."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    chunks = [order[start : start + batch_size] for start in range(0, stop, batch_size)]
    if is_streamed(split.inputs):
        wanted = [chunk[rows(len(chunk))] if rows is not None else chunk for chunk in chunks]
        for idx, part, inputs in zip(chunks, wanted, split.inputs.batches(wanted)):
            if len(part) < len(idx):
                whole = inputs.new_zeros((len(idx), *inputs.shape[1:]))
                whole[rows(len(idx))] = inputs
                inputs = whole
            yield Batch(inputs, split.labels[idx], idx)
        return
    for idx in chunks:
        yield Batch(split.inputs[idx], split.labels[idx], idx)


def stratified_holdout(labels: np.ndarray, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices 0..N-1 into (keep, holdout), holding out `n_holdout` samples stratified by label.

    Each class gives floor(n_holdout * count / N) samples; the few left over go to the classes
    with the largest remainders (ties: the smaller label first). Within a class the held-out
    samples are drawn with numpy's legacy `RandomState(seed)`, whose stream numpy keeps
    stable across releases, so the split is the same on every machine and version. Both
    index arrays are returned sorted.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 < n_holdout < n:
        raise ValueError(f"cannot hold out {n_holdout} of {n} samples")
    classes, counts = np.unique(labels, return_counts=True)
    take = counts * n_holdout // n
    remainder = counts * n_holdout % n
    left = n_holdout - int(take.sum())
    order = np.lexsort((classes, -remainder))  # largest remainder first, then smaller label
    take[order[:left]] += 1
    rng = np.random.RandomState(seed)
    held = [np.flatnonzero(labels == c)[rng.permutation(int(count))[:k]] for c, count, k in zip(classes, counts, take)]
    holdout = np.sort(np.concatenate(held))
    mask = np.ones(n, dtype=bool)
    mask[holdout] = False
    return np.flatnonzero(mask), holdout


def make_split(inputs: np.ndarray, labels: np.ndarray) -> Split:
    """Wrap numpy arrays as a Split: float32 inputs, int64 labels (contiguous, owned tensors)."""
    return Split(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)),
                 torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)))
