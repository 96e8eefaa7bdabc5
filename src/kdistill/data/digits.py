"""scikit-learn's digits (8x8 grey images, 10 classes, 1,797 samples): ships with the install."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from kdistill.config import DataConfig
from kdistill.data.splits import DataSplits, Split

# Fixed stratified split, the same on every machine: 60% train, 20% validation, 20% test.
SPLIT_SEED = 0


def load(cfg: DataConfig | None = None) -> DataSplits:
    """Load digits as (N, 1, 8, 8) float tensors: pixels / 16, then standardised by the train mean/std.

    `cfg` is accepted for the common loader signature; digits ships with scikit-learn, so
    `data.root` and `data.download` have nothing to do.
    """
    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    train_idx, rest_idx = train_test_split(idx, test_size=0.4, stratify=y, random_state=SPLIT_SEED)
    val_idx, test_idx = train_test_split(rest_idx, test_size=0.5, stratify=y[rest_idx], random_state=SPLIT_SEED)
    mean = float(x[train_idx].mean())
    std = float(x[train_idx].std())
    x = (x - mean) / std

    def split(rows: np.ndarray) -> Split:
        return Split(torch.from_numpy(x[rows][:, None]).contiguous(), torch.from_numpy(y[rows]))

    return DataSplits(
        name="digits",
        train=split(train_idx),
        val=split(val_idx),
        test=split(test_idx),
        classes=[str(c) for c in range(10)],
        normalization={"scale": 1 / 16, "mean": mean, "std": std},
    )
