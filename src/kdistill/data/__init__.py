"""Data sets by name. Loaders read local files only; nothing is downloaded silently."""

from __future__ import annotations

from typing import Callable

from kdistill.config import DataConfig
from kdistill.data import digits
from kdistill.data.splits import Batch, DataSplits, Split, iterate_batches
from kdistill.errors import KdistillError

LOADERS: dict[str, Callable[[str | None], DataSplits]] = {"digits": digits.load}


def load_dataset(cfg: DataConfig) -> DataSplits:
    """Load the data set named in `cfg` (all splits, in memory)."""
    loader = LOADERS.get(cfg.name)
    if loader is None:
        raise KdistillError(f"data.name: unknown data set {cfg.name!r} (known: {', '.join(sorted(LOADERS))})")
    return loader(cfg.root)


__all__ = ["Batch", "DataSplits", "Split", "iterate_batches", "load_dataset", "LOADERS"]
