"""CIFAR-10 and CIFAR-100 from the standard python-pickle folders (32x32 RGB images).

`data.root` points at the folder itself or at its parent:

- cifar10: `cifar-10-batches-py/` with `data_batch_1` .. `data_batch_5`, `test_batch`,
  `batches.meta` (class names in `label_names`, labels in `labels`);
- cifar100: `cifar-100-python/` with `train`, `test`, `meta` (the 100 fine classes:
  `fine_label_names`, labels in `fine_labels`).

kdistill does not download CIFAR. Each batch is a dict with `data`, a (N, 3072) uint8 array
whose rows are the 1024 red, then green, then blue pixels of a 32x32 image in row-major order.

The files are pickles, and a pickle can run code while it is loaded. They are read with
`SafeUnpickler`, which hands out only what numpy arrays need (`_reconstruct`, `_frombuffer`,
`ndarray`, `dtype`, `scalar`, and `_codecs.encode`, which Python 3's protocol-2 pickles use
for bytes) and refuses every other global with a KdistillError. A data file never runs code.

Splits: the official test set is the test split; the 50,000 training images are split into
45,000 train and 5,000 validation (1/10), stratified by class, with
`splits.stratified_holdout(labels, N // 10, seed=SPLIT_SEED)`.

Normalisation: pixels / 255, then per channel (R, G, B) minus the mean and divided by the
standard deviation of all pixels of the 50,000 official training images (the usual constants;
CIFAR is not on this machine, so we did not recompute them):

- CIFAR-10:  mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616)
- CIFAR-100: mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2762)

(The often copied CIFAR-10 std (0.2023, 0.1994, 0.2010) is not the pixel std; mdistiller's
CIFAR-100 constants differ from ours by less than 0.0003.)
"""

from __future__ import annotations

import codecs
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdistill.config import DataConfig
from kdistill.data.splits import DataSplits, make_split, stratified_holdout
from kdistill.errors import KdistillError

SPLIT_SEED = 0
VAL_FRACTION = 10  # 5,000 of the 50,000 training images
PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class Layout:
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


LAYOUTS = {
    "cifar10": Layout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                      "batches.meta", "labels", "label_names", 10,
                      (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": Layout("cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names", 100,
                       (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _allowed_globals() -> dict[tuple[str, str], object]:
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        from numpy._core import multiarray, numeric
    else:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that builds numpy arrays and plain containers, and refuses every other global."""

    def __init__(self, file, path: Path | str):
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        found = self._allowed.get((module, name))
        if found is None:
            raise KdistillError(
                f"{self._path}: refused to unpickle: the file asks for {module}.{name}; a data file may only "
                "hold numpy arrays, lists, strings and numbers (it could run code otherwise)"
            )
        return found

    def persistent_load(self, pid):
        raise KdistillError(f"{self._path}: refused to unpickle: the file uses persistent ids")


def read_pickle(path: Path) -> object:
    """Load one pickle with SafeUnpickler; any failure is a KdistillError naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KdistillError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return SafeUnpickler(io.BytesIO(raw), path).load()
    except KdistillError:
        raise
    except Exception as exc:  # a corrupt or cut-off pickle can fail in many ways
        raise KdistillError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from None


def _get(mapping: dict, key: str, path: Path):
    for k in (key.encode(), key):
        if k in mapping:
            return mapping[k]
    raise KdistillError(f"{path}: no {key!r} entry (found {sorted(str(k) for k in mapping)[:6]})")


def _read_batch(path: Path, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise KdistillError(f"{path}: missing CIFAR file")
    batch = read_pickle(path)
    if not isinstance(batch, dict):
        raise KdistillError(f"{path}: expected a dict of arrays, got {type(batch).__name__}")
    data = _get(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        shape = data.shape if isinstance(data, np.ndarray) else type(data).__name__
        dtype = f" {data.dtype}" if isinstance(data, np.ndarray) else ""
        raise KdistillError(f"{path}: 'data' must be a (N, {PIXELS}) uint8 array, got {shape}{dtype}")
    labels = _get(batch, layout.label_key, path)
    try:
        labels = np.asarray(labels)
    except Exception:
        labels = np.asarray([], dtype=object)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise KdistillError(f"{path}: {layout.label_key!r} must be a list of integers")
    if len(labels) != len(data):
        raise KdistillError(f"{path}: {len(labels)} labels for {len(data)} images")
    bad = np.flatnonzero((labels < 0) | (labels >= layout.num_classes))
    if len(bad):
        raise KdistillError(f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is out of range 0..{layout.num_classes - 1}")
    return data, labels.astype(np.int64)


def _read_classes(path: Path, layout: Layout) -> list[str]:
    if not path.is_file():
        raise KdistillError(f"{path}: missing CIFAR file")
    meta = read_pickle(path)
    if not isinstance(meta, dict):
        raise KdistillError(f"{path}: expected a dict, got {type(meta).__name__}")
    names = _get(meta, layout.names_key, path)
    if not isinstance(names, (list, tuple)) or len(names) != layout.num_classes:
        count = len(names) if isinstance(names, (list, tuple)) else type(names).__name__
        raise KdistillError(f"{path}: {layout.names_key!r} must list {layout.num_classes} class names, got {count}")
    out = []
    for n in names:
        if isinstance(n, bytes):
            n = n.decode("utf-8", errors="replace")
        if not isinstance(n, str):
            raise KdistillError(f"{path}: {layout.names_key!r} must hold strings")
        out.append(n)
    return out


def find_folder(name: str, cfg: DataConfig) -> Path:
    """The CIFAR folder: data.root itself, or data.root/<standard folder name>."""
    layout = LAYOUTS[name]
    if cfg.download:
        raise KdistillError(f"data.download: kdistill cannot download {name}; unpack the python version "
                            f"({layout.folder}/) and set data.root to it")
    if not cfg.root:
        raise KdistillError(f"data.root: {name} needs data.root, the {layout.folder}/ folder (or its parent)")
    root = Path(cfg.root).expanduser()
    if (root / layout.folder).is_dir():
        return root / layout.folder
    if (root / layout.meta).is_file() or (root / layout.train[0]).is_file():
        return root
    if not root.is_dir():
        raise KdistillError(f"data.root: {root} is not a folder")
    raise KdistillError(f"data.root: {root} is not a {name} folder: expected {layout.folder}/ in it, or its files "
                        f"({', '.join(layout.train)}, {layout.test}, {layout.meta})")


def load(cfg: DataConfig, name: str) -> DataSplits:
    """Load cifar10 or cifar100 as (N, 3, 32, 32) float32 tensors; see the module docstring."""
    layout = LAYOUTS[name]
    folder = find_folder(name, cfg)
    classes = _read_classes(folder / layout.meta, layout)
    parts = [_read_batch(folder / f, layout) for f in layout.train]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_batch(folder / layout.test, layout)
    n_val = len(train_y) // VAL_FRACTION
    if n_val < 1 or len(test_y) < 1:
        raise KdistillError(f"{folder}: too few samples ({len(train_y)} train, {len(test_y)} test) to split")
    train_idx, val_idx = stratified_holdout(train_y, n_val, SPLIT_SEED)
    scale = (1.0 / (255.0 * np.asarray(layout.std, dtype=np.float32)))[:, None, None]
    shift = (np.asarray(layout.mean, dtype=np.float32) / np.asarray(layout.std, dtype=np.float32))[:, None, None]

    def split(data: np.ndarray, labels: np.ndarray):
        x = data.reshape(-1, 3, 32, 32).astype(np.float32)
        x *= scale
        x -= shift
        return make_split(x, labels)

    return DataSplits(
        name=name,
        train=split(train_x[train_idx], train_y[train_idx]),
        val=split(train_x[val_idx], train_y[val_idx]),
        test=split(test_x, test_y),
        classes=classes,
        normalization={"scale": 1 / 255, "mean": list(layout.mean), "std": list(layout.std), "folder": str(folder),
                       "split": f"official test; train/val = stratified_holdout(N // {VAL_FRACTION}, seed={SPLIT_SEED})"},
    )


def load_cifar10(cfg: DataConfig) -> DataSplits:
    return load(cfg, "cifar10")


def load_cifar100(cfg: DataConfig) -> DataSplits:
    return load(cfg, "cifar100")
