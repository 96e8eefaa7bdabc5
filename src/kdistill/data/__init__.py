"""Data sets by name. Loaders read local files only; nothing is downloaded unless `data.download: true`.

Every loader takes the whole DataConfig and returns DataSplits: train/val/test held in memory
as float32 (N, C, H, W) inputs and int64 labels, normalised at load time. docs/design.md
("Data sets") lists the formats, where files are looked for, the splits and the normalisation.
"""

from __future__ import annotations

from typing import Callable

from kdistill.config import DataConfig
from kdistill.data import cifar, digits, idx, imagefolder
from kdistill.data.splits import Batch, DataSplits, Split, iterate_batches
from kdistill.errors import KdistillError

LOADERS: dict[str, Callable[[DataConfig], DataSplits]] = {
    "digits": digits.load,
    "fashion-mnist": idx.load_fashion_mnist,
    "mnist": idx.load_mnist,
    "cifar10": cifar.load_cifar10,
    "cifar100": cifar.load_cifar100,
    "imagefolder": imagefolder.load,
}


def load_dataset(cfg: DataConfig) -> DataSplits:
    """Load the data set named in `cfg` (all splits, in memory)."""
    loader = LOADERS.get(cfg.name)
    if loader is None:
        raise KdistillError(f"data.name: unknown data set {cfg.name!r} (known: {', '.join(sorted(LOADERS))})")
    if cfg.image_size is not None and cfg.name != "imagefolder":
        raise KdistillError(f"data.image_size: only imagefolder resizes images; {cfg.name} has a fixed size (remove data.image_size)")
    return loader(cfg)


__all__ = ["Batch", "DataSplits", "Split", "iterate_batches", "load_dataset", "LOADERS"]
