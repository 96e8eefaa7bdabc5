"""Data sets by name. Loaders read local files only; nothing is downloaded unless `data.download: true`.

Every loader takes the whole DataConfig and returns DataSplits: train/val/test held in memory
as float32 (N, C, H, W) inputs and int64 labels, normalised at load time. docs/design.md
("Data sets") lists the formats, where files are looked for, the splits and the normalisation.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from kdistill.config import DataConfig
from kdistill.data import cifar, digits, hf_images, idx, imagefolder, manifest
from kdistill.data.streaming import take
from kdistill.data.splits import Batch, DataSplits, Split, iterate_batches, stratified_holdout
from kdistill.errors import KdistillError

LOADERS: dict[str, Callable[[DataConfig], DataSplits]] = {
    "digits": digits.load,
    "fashion-mnist": idx.load_fashion_mnist,
    "mnist": idx.load_mnist,
    "cifar10": cifar.load_cifar10,
    "cifar100": cifar.load_cifar100,
    "imagefolder": imagefolder.load,
    "manifest": manifest.load,
    "hf-disk": hf_images.load,
}
IMAGE_FILES = ("imagefolder", "manifest", "hf-disk")  # read from image files: may stream (data.in_memory)


def load_dataset(cfg: DataConfig) -> DataSplits:
    """Load the data set named in `cfg` (all splits, in memory)."""
    loader = LOADERS.get(cfg.name)
    if loader is None:
        raise KdistillError(f"data.name: unknown data set {cfg.name!r} (known: {', '.join(sorted(LOADERS))})")
    if cfg.image_size is not None and cfg.name not in IMAGE_FILES:
        raise KdistillError(f"data.image_size: only image files (imagefolder, manifest, hf-disk) are resized; {cfg.name} has a fixed size (remove data.image_size)")
    if cfg.name != "manifest" and (cfg.train or cfg.val or cfg.test):
        raise KdistillError(f"data.train/val/test: manifest files, for data.name: manifest only (not {cfg.name})")
    if cfg.name != "hf-disk" and (cfg.image_column != "image" or cfg.label_column != "label"):
        raise KdistillError(f"data.image_column/label_column: columns of an hf-disk data set (not {cfg.name})")
    if cfg.in_memory is False and cfg.name not in IMAGE_FILES:
        raise KdistillError(f"data.in_memory: false streams image files ({', '.join(IMAGE_FILES)}); {cfg.name} is "
                            "always held in memory")
    splits = loader(cfg)
    if splits.num_classes < 2:
        raise KdistillError(f"data: {splits.name} has {splits.num_classes} class ({', '.join(splits.classes)}); a "
                            "classifier needs at least 2")
    if cfg.train_samples is not None:
        splits = train_subset(splits, cfg.train_samples)
    return splits


SUBSET_SEED = 0


def train_subset(splits: DataSplits, n: int) -> DataSplits:
    """Keep a stratified draw of `n` training samples (fixed seed: every run gets the same ones).

    Validation, test and the normalisation (computed on the full training split) are unchanged,
    so runs with and without a budget are measured alike and a teacher trained on all the data
    still sees inputs normalised as it was trained.
    """
    total = len(splits.train)
    if n >= total:
        raise KdistillError(f"data.train_samples: {n} is not fewer than the {total} training samples of {splits.name} "
                            "(remove data.train_samples to use them all)")
    if n < splits.num_classes:
        raise KdistillError(f"data.train_samples: {n} is fewer than the {splits.num_classes} classes of {splits.name}")
    _, keep = stratified_holdout(splits.train.labels.numpy(), n, SUBSET_SEED)
    index = torch.from_numpy(keep)
    train = Split(take(splits.train.inputs, index), splits.train.labels[index])
    normalization = {**splits.normalization, "train_samples": f"{n} of {total} (stratified, seed {SUBSET_SEED})"}
    return replace(splits, train=train, normalization=normalization)


__all__ = ["Batch", "DataSplits", "Split", "iterate_batches", "load_dataset", "train_subset", "LOADERS"]
