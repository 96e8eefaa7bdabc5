"""Your own images, one folder per class: `imagefolder`.

Layout under `data.root`:

    train/<class>/*.png|*.jpg|*.jpeg     required
    val/<class>/...                      required
    test/<class>/...                     optional; without it the test split IS the validation split

Class names are the folder names under `train/`, sorted (Python string order); the label of
a class is its index in that list. `val/` (and `test/`) must have exactly the same class
folders. Files with other extensions and hidden files are ignored; an empty class folder is
an error. Within a class, images are read in sorted file-name order, so loading is
deterministic.

Decoding (Pillow): if every image of every split is greyscale (modes 1, L, LA, or 16-bit I;16/I,
scaled to 8 bits by / 257) the data set has one channel (L); otherwise every image is
converted to RGB (alpha is dropped, palettes are expanded). All images must have the same
size, or set `data.image_size: S` to resize every image to S x S (bilinear; the aspect ratio
is not kept).

Normalisation: pixels / 255, then per channel minus the mean and divided by the standard
deviation of all pixels of the *train* split (recorded in `DataSplits.normalization`, with
`test_source` saying whether the test split is `test/` or, lacking it, `val/`).
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kdistill.config import DataConfig
from kdistill.data.splits import DataSplits, Split, make_split
from kdistill.data.streaming import ImageFiles, stream_statistics
from kdistill.errors import KdistillError

log = logging.getLogger(__name__)

EXTENSIONS = {".png", ".jpg", ".jpeg"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B"}


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_folders(split_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(split_dir.iterdir()) if p.is_dir() and _visible(p)}


def _scan(split_dir: Path, classes: list[str] | None) -> tuple[list[str], list[Path], list[int]]:
    """Class names and (sorted) image files of one split folder; `classes` is train's list to match."""
    if not split_dir.is_dir():
        raise KdistillError(f"{split_dir}: missing folder (imagefolder needs train/ and val/ under data.root, one sub-folder per class)")
    folders = _class_folders(split_dir)
    if not folders:
        raise KdistillError(f"{split_dir}: no class folders (expected {split_dir}/<class>/*.png|jpg|jpeg)")
    names = sorted(folders)
    if classes is not None and names != classes:
        missing = sorted(set(classes) - set(names))
        extra = sorted(set(names) - set(classes))
        parts = ([f"missing {missing}"] if missing else []) + ([f"not in train/: {extra}"] if extra else [])
        raise KdistillError(f"{split_dir}: class folders differ from train/'s ({'; '.join(parts)})")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        images = sorted(p for p in folders[name].iterdir()
                        if p.is_file() and _visible(p) and p.suffix.lower() in EXTENSIONS)
        if not images:
            raise KdistillError(f"{folders[name]}: empty class folder (no .png, .jpg or .jpeg files)")
        files += images
        labels += [label] * len(images)
    return names, files, labels


def _open(path: Path, decode: bool = True):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        if decode:
            image.load()
        else:
            image.close()  # mode and size stay readable
        return image
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise KdistillError(f"{path}: unreadable image ({exc})") from None


def _peek(path: Path):
    """The image's header only (Pillow reads mode and size without decoding)."""
    return _open(path, decode=False)


def decode_image(item: Any, mode: str, size: tuple[int, int], resize: bool, reference: Any = None,
                 opener: Callable[[Any], Any] = _open) -> np.ndarray:
    """One image (a file, or what `opener` turns `item` into) as (H, W, C) uint8 pixels in `mode` ("L" or
    "RGB"), `size` (width, height)."""
    from PIL import Image

    image = opener(item)
    if image.mode.startswith("I"):  # 16-bit greyscale: scale 0..65535 to 0..255 ourselves
        grey8 = np.clip(np.rint(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey8)  # 2-D uint8 -> mode L
    image = image.convert(mode)
    if resize and image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    if image.size != size:
        raise KdistillError(
            f"{item}: image is {image.size[0]}x{image.size[1]} but {reference or 'the first image'} is "
            f"{size[0]}x{size[1]}; images must share one size, or set data.image_size to resize them all"
        )
    return np.asarray(image, dtype=np.uint8).reshape(size[1], size[0], 1 if mode == "L" else 3)


def _decode(items: list, mode: str, size: tuple[int, int], resize: bool, opener: Callable[[Any], Any]) -> np.ndarray:
    """Decode `items` into one (N, H, W, C) uint8 array; `size` is (width, height)."""
    out = np.empty((len(items), size[1], size[0], 1 if mode == "L" else 3), dtype=np.uint8)
    for i, item in enumerate(items):
        out[i] = decode_image(item, mode, size, resize, items[0], opener)
    return out


def image_format(items: list, image_size: int | None, peek: Callable[[Any], Any] = _peek) -> tuple[str, tuple[int, int], bool]:
    """(mode, (width, height), resize) for a data set: greyscale only if every image is, the first image's
    size unless `image_size` is set. For files, reads headers only."""
    grey = True
    first_size = None
    resize = image_size is not None
    for item in items:
        image = peek(item)
        grey = grey and image.mode in GREY_MODES
        if first_size is None:
            first_size = image.size
        elif not resize and image.size != first_size:  # found now, not when a streamed batch reaches it
            raise KdistillError(f"{item}: image is {image.size[0]}x{image.size[1]} but {items[0]} is "
                                f"{first_size[0]}x{first_size[1]}; images must share one size, or set data.image_size "
                                "to resize them all")
    return "L" if grey else "RGB", (image_size, image_size) if resize else first_size, resize


def image_splits(cfg: DataConfig, name: str, classes: list[str], parts: dict[str, tuple[list, list[int]]],
                 extra: dict, opener: Callable[[Any], Any] = _open, peek: Callable[[Any], Any] = _peek) -> DataSplits:
    """Train/val/test images (lists of files, or of items `opener` opens, and labels) as a DataSplits, in memory
    or streamed from disk (`data.in_memory`); normalised by the per-channel mean and std of the training pixels
    either way."""
    has_test = "test" in parts
    everything = [f for files, _ in parts.values() for f in files]
    mode, size, resize = image_format(everything, cfg.image_size, peek)
    channels = 1 if mode == "L" else 3
    train_files, train_labels = parts["train"]
    decoded_mb = len(train_files) * channels * size[0] * size[1] * 4 / 2**20
    stream = cfg.in_memory is False or (cfg.in_memory == "auto" and decoded_mb > cfg.memory_limit_mb)
    workers = cfg.workers if cfg.workers is not None else (os.cpu_count() or 1)
    labels_of = {split: np.asarray(labels, dtype=np.int64) for split, (_, labels) in parts.items()}
    if stream:
        decode = partial(decode_image, mode=mode, size=size, resize=resize, opener=opener)
        unit = np.ones((channels, 1, 1), np.float32)
        lazy = {split: ImageFiles(files, decode, (channels, size[1], size[0]), unit, 0 * unit, workers,
                                  f"{name}|{extra}|{mode}|{size}|{resize}")
                for split, (files, _) in parts.items()}
        mean, std = stream_statistics(lazy["train"])
    else:
        pixels = {split: _decode(files, mode, size, resize, opener) for split, (files, _) in parts.items()}
        flat = pixels["train"].reshape(-1, channels)
        mean = flat.mean(axis=0, dtype=np.float64) / 255.0
        std = flat.std(axis=0, dtype=np.float64) / 255.0
    std = np.where(std > 1e-12, std, 1.0)
    scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    shift = (mean / std).astype(np.float32)[:, None, None]

    def split(name_: str) -> Split:
        if stream:
            files = lazy[name_]
            return Split(files.with_changes(scale=scale, shift=shift), torch.from_numpy(labels_of[name_]))
        x = pixels[name_].transpose(0, 3, 1, 2).astype(np.float32)
        x *= scale
        x -= shift
        return make_split(x, labels_of[name_])

    val = split("val")
    how = f"streamed from disk by {workers} worker(s)" if stream else "held in memory"
    note = (f"kdistill: data: {len(train_files):,} training images ({decoded_mb:,.0f} MB decoded; data.in_memory="
            f"{cfg.in_memory}, data.memory_limit_mb={cfg.memory_limit_mb}): {how}")
    return DataSplits(notes=[note],
        name=name, train=split("train"), val=val, test=split("test") if has_test else val, classes=classes,
        normalization={"scale": 1 / 255, "mean": mean.tolist(), "std": std.tolist(), "mode": mode,
                       "size": [size[1], size[0]], "resized": resize, "streamed": stream,
                       "test_source": "test" if has_test else "val (no test split)", **extra},
    )


def load(cfg: DataConfig) -> DataSplits:
    """Load an image folder tree as (N, C, H, W) float32 tensors; see the module docstring."""
    if cfg.download:
        raise KdistillError("data.download: imagefolder reads your own files; there is nothing to download")
    if not cfg.root:
        raise KdistillError("data.root: imagefolder needs data.root, a folder with train/<class>/ and val/<class>/")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise KdistillError(f"data.root: {root} is not a folder")
    classes, train_files, train_labels = _scan(root / "train", None)
    _, val_files, val_labels = _scan(root / "val", classes)
    has_test = (root / "test").exists()
    if has_test:
        _, test_files, test_labels = _scan(root / "test", classes)
    else:
        log.warning("imagefolder %s has no test/ folder: the test split is the validation split", root)

    parts = {"train": (train_files, train_labels), "val": (val_files, val_labels)}
    if has_test:
        parts["test"] = (test_files, test_labels)
    return image_splits(cfg, "imagefolder", classes, parts,
                        {"root": str(root), **({} if has_test else {"test_source": "val (no test/ folder)"})})
