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
from pathlib import Path

import numpy as np

from kdistill.config import DataConfig
from kdistill.data.splits import DataSplits, make_split
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


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
        return image
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise KdistillError(f"{path}: unreadable image ({exc})") from None


def _decode(files: list[Path], mode: str, size: tuple[int, int] | None, resize: bool) -> np.ndarray:
    """Decode `files` into one (N, H, W, C) uint8 array; `size` is (width, height)."""
    from PIL import Image

    out = None
    for i, path in enumerate(files):
        image = _open(path)
        if image.mode.startswith("I"):  # 16-bit greyscale: scale 0..65535 to 0..255 ourselves
            grey8 = np.clip(np.rint(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
            image = Image.fromarray(grey8)  # 2-D uint8 -> mode L
        image = image.convert(mode)
        if resize and image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        if image.size != size:
            raise KdistillError(
                f"{path}: image is {image.size[0]}x{image.size[1]} but {files[0]} is {size[0]}x{size[1]}; "
                "images must share one size, or set data.image_size to resize them all"
            )
        pixels = np.asarray(image, dtype=np.uint8)
        if out is None:
            out = np.empty((len(files), size[1], size[0], 1 if mode == "L" else 3), dtype=np.uint8)
        out[i] = pixels.reshape(out.shape[1:])
    return out


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
        test_files, test_labels = val_files, val_labels

    # First pass: headers only (Pillow reads them without decoding), to fix one mode and size.
    from PIL import Image, UnidentifiedImageError

    everything = train_files + val_files + (test_files if has_test else [])
    grey = True
    first_size = None
    for path in everything:
        try:
            with Image.open(path) as image:
                grey = grey and image.mode in GREY_MODES
                if first_size is None:
                    first_size = image.size
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise KdistillError(f"{path}: unreadable image ({exc})") from None
    mode = "L" if grey else "RGB"
    resize = cfg.image_size is not None
    size = (cfg.image_size, cfg.image_size) if resize else first_size

    train_u8 = _decode(train_files, mode, size, resize)
    val_u8 = _decode(val_files, mode, size, resize)
    test_u8 = _decode(test_files, mode, size, resize) if has_test else val_u8

    channels = train_u8.shape[-1]
    flat = train_u8.reshape(-1, channels)
    mean = flat.mean(axis=0, dtype=np.float64) / 255.0
    std = flat.std(axis=0, dtype=np.float64) / 255.0
    std = np.where(std > 1e-12, std, 1.0)
    scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    shift = (mean / std).astype(np.float32)[:, None, None]

    def split(pixels: np.ndarray, labels: list[int]):
        x = pixels.transpose(0, 3, 1, 2).astype(np.float32)
        x *= scale
        x -= shift
        return make_split(x, np.asarray(labels, dtype=np.int64))

    val = split(val_u8, val_labels)
    return DataSplits(
        name="imagefolder",
        train=split(train_u8, train_labels),
        val=val,
        test=split(test_u8, test_labels) if has_test else val,
        classes=classes,
        normalization={"scale": 1 / 255, "mean": mean.tolist(), "std": std.tolist(), "mode": mode,
                       "size": [size[1], size[0]], "resized": resize, "root": str(root),
                       "test_source": "test" if has_test else "val (no test/ folder)"},
    )
