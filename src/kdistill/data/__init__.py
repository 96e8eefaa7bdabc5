"""Data sets by name. Loaders read local files only; nothing is downloaded unless `data.download: true`.

Every loader takes the whole DataConfig and returns DataSplits: train/val/test held in memory
as float32 (N, C, H, W) inputs and int64 labels, normalised at load time. docs/design.md
("Data sets") lists the formats, where files are looked for, the splits and the normalisation.
"""

from __future__ import annotations

from typing import Callable

from kdistill.config import DataConfig
from kdistill.data import cifar, digits, hf_images, idx, imagefolder, manifest
from kdistill.data.splits import Batch, DataSplits, Split, iterate_batches
from kdistill.data.transfer import UNLABELED, add_unlabeled_images, train_subset, unlabel_rest
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


def load_dataset(cfg: DataConfig, unlabeled: bool = True) -> DataSplits:
    """Load the data set named in `cfg`, with its transfer data (kdistill.data.transfer): `data.labeled_samples`
    unlabels the rest of the training split and `data.unlabeled` adds images, unless `unlabeled` is False (a run
    that learns from labels only: then labeled_samples keeps only the labelled ones)."""
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
    if cfg.labeled_samples is not None:
        splits = unlabel_rest(splits, cfg.labeled_samples) if unlabeled else \
            train_subset(splits, cfg.labeled_samples, "labeled_samples")
    if cfg.unlabeled is not None and unlabeled:
        splits = add_unlabeled_images(splits, cfg)
    return splits


__all__ = ["Batch", "DataSplits", "Split", "iterate_batches", "load_dataset", "train_subset", "LOADERS", "UNLABELED"]
