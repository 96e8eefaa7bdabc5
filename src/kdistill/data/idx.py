"""Fashion-MNIST and MNIST from the four standard IDX files (28x28 grey images, 10 classes).

Files: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
`t10k-labels-idx1-ubyte`, each plain or gzipped (`.gz`; the plain file wins when both are
there). All four must be in one folder. Where we look, in order:

1. `data.root`, when it is set (and only there);
2. for fashion-mnist, `/usr/share/datasets/fashion-mnist/` (Debian package `dataset-fashion-mnist`);
3. the user cache, `$XDG_CACHE_HOME/kdistill/<name>/` (default `~/.cache/kdistill/<name>/`).

With `data.download: true` and the files found nowhere, the official Fashion-MNIST files are
fetched into `data.root` (when set) or the cache, each checked against the SHA-256 below
before it is kept. kdistill has no checksums for MNIST that it could verify, so it does not
download MNIST: place the four files in `data.root`.

Splits: the official 10,000-image test set is the test split. The 60,000 training images are
split into 55,000 train and 5,000 validation (1/12 of them), stratified by class (500 per
class on Fashion-MNIST), with `splits.stratified_holdout(labels, N // 12, seed=SPLIT_SEED)`.

Normalisation: pixels / 255, then minus the mean and divided by the standard deviation of
all pixels of the *train* split (computed at load; val and test use the same two numbers).
For Fashion-MNIST these are mean 0.286044, std 0.353024 (`FASHION_MNIST_STATS`, checked by
the tests against the real files; over all 60,000 training images the usual quote is
0.2860 / 0.3530). For MNIST the usual quote over all 60,000 is 0.1307 / 0.3081; the 55,000
train split gives nearly the same. `DataSplits.normalization` records the values used.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from kdistill.config import DataConfig
from kdistill.data.splits import DataSplits, make_split, stratified_holdout
from kdistill.errors import KdistillError

SPLIT_SEED = 0
VAL_FRACTION = 12  # 1/12 of the official training set: 5,000 of 60,000
FASHION_MNIST_STATS = (0.286044, 0.353024)  # mean, std of the 55,000-image train split (pixels / 255)

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
NUM_CLASSES = 10

CLASSES = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "mnist": [str(d) for d in range(10)],
}
SYSTEM_DIRS = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "mnist": [],
}

# Downloads. The checksums are SHA-256 of the *uncompressed* IDX bytes, computed from the
# files of Debian's dataset-fashion-mnist (a copy of upstream's data/fashion). Hashing the
# content rather than the .gz keeps them valid when a mirror or packager re-compresses the
# files: Debian's copies differ from upstream's .gz only in the gzip header (no file name,
# another timestamp), so their .gz md5s differ from the ones upstream's README lists
# (8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...), while the content is the same.
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DOWNLOADS = {"fashion-mnist": (FASHION_MNIST_URL, FASHION_MNIST_SHA256)}


def cache_dir(name: str) -> Path:
    """`$XDG_CACHE_HOME/kdistill/<name>`, or `~/.cache/kdistill/<name>` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kdistill" / name


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate(name: str, cfg: DataConfig) -> dict[str, Path]:
    """The four IDX files of `name`: from the first folder in the search order that has all four."""
    folders = [Path(cfg.root).expanduser()] if cfg.root else [*SYSTEM_DIRS[name], cache_dir(name)]
    looked = []
    for folder in folders:
        found = {key: _find_file(folder, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
        missing = [FILES[key] for key, path in found.items() if path is None]
        looked.append(f"{folder} (missing {', '.join(missing)})" if len(missing) < 4 else str(folder))
    if cfg.download:
        if name not in DOWNLOADS:
            raise KdistillError(
                f"data.download is only supported for fashion-mnist (kdistill has no verified checksums for {name}); "
                f"place {', '.join(FILES.values())} (plain or .gz) in a folder and set data.root to it"
            )
        return download(name, folders[0] if cfg.root else cache_dir(name))
    hint = "set data.root to a folder holding them (plain or .gz)"
    if name in DOWNLOADS:
        hint += ", or set data.download: true to fetch and verify the official files"
        if not cfg.root:
            hint += " (or apt-get install dataset-fashion-mnist)"
    raise KdistillError(f"{name}: the four IDX files {', '.join(FILES.values())} were not found; looked in {'; '.join(looked)}; {hint}")


def fetch(url: str, dest: Path) -> None:
    """Write the body at `url` to `dest` (the tests replace this function; they never download)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)


def download(name: str, folder: Path) -> dict[str, Path]:
    """Fetch the missing files of `name` into `folder`; each is kept only if its SHA-256 matches."""
    base_url, checksums = DOWNLOADS[name]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KdistillError(f"data.download: cannot create {folder}: {exc.strerror or exc}") from None
    paths = {}
    for key, stem in FILES.items():
        existing = _find_file(folder, stem)
        if existing is not None:
            paths[key] = existing
            continue
        url = base_url + stem + ".gz"
        final = folder / f"{stem}.gz"
        tmp = folder / f".{stem}.gz.part-{os.getpid()}"
        try:
            try:
                fetch(url, tmp)
            except OSError as exc:  # urllib.error.URLError is an OSError
                raise KdistillError(f"data.download: could not fetch {url}: {getattr(exc, 'reason', None) or exc}") from None
            content = _decompress(tmp, tmp.read_bytes(), what=f"download of {url}")
            got = hashlib.sha256(content).hexdigest()
            if got != checksums[stem]:
                raise KdistillError(
                    f"data.download: {url} failed its checksum (SHA-256 of the content {got}, expected "
                    f"{checksums[stem]}); the file was not kept"
                )
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        paths[key] = final
    return paths


def _decompress(path: Path, raw: bytes, what: str | None = None) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; a cut-off stream is an EOFError
        raise KdistillError(f"{what or path}: corrupt gzip file ({exc})") from None


def read_idx(path: Path, kind: str) -> np.ndarray:
    """Parse one IDX file (`kind` "images" → (N, rows, cols) uint8, "labels" → (N,) uint8), checking its header."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KdistillError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if path.name.endswith(".gz"):
        raw = _decompress(path, raw)
    magic, ndim = (IMAGES_MAGIC, 3) if kind == "images" else (LABELS_MAGIC, 1)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise KdistillError(f"{path}: truncated IDX file ({len(raw)} bytes, shorter than its {header}-byte header)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise KdistillError(f"{path}: not an IDX {kind} file (magic number {found}, expected {magic})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise KdistillError(f"{path}: {state}: the header says {kind} {dims} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, "images")
    labels = read_idx(labels_path, "labels")
    if len(labels) != len(images):
        raise KdistillError(f"{labels_path}: {len(labels)} labels but {images_path} has {len(images)} images")
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        bad = int(np.flatnonzero(labels >= NUM_CLASSES)[0])
        raise KdistillError(f"{labels_path}: label {int(labels[bad])} at index {bad} is out of range 0..{NUM_CLASSES - 1}")
    return images, labels


def load(cfg: DataConfig, name: str) -> DataSplits:
    """Load `name` (fashion-mnist or mnist) as (N, 1, 28, 28) float32 tensors; see the module docstring."""
    paths = locate(name, cfg)
    train_x, train_y = _read_pair(paths["train_images"], paths["train_labels"])
    test_x, test_y = _read_pair(paths["test_images"], paths["test_labels"])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise KdistillError(
            f"{paths['test_images']}: images are {test_x.shape[1:]} pixels but the training images "
            f"({paths['train_images']}) are {train_x.shape[1:]}"
        )
    n_val = len(train_y) // VAL_FRACTION
    if n_val < 1 or len(train_y) - n_val < 1 or len(test_y) < 1:
        raise KdistillError(f"{paths['train_labels']}: too few samples ({len(train_y)} train, {len(test_y)} test) to split")
    train_idx, val_idx = stratified_holdout(train_y, n_val, SPLIT_SEED)

    pixels = train_x[train_idx]
    mean = float(pixels.mean(dtype=np.float64) / 255.0)
    std = float(pixels.std(dtype=np.float64) / 255.0) or 1.0
    scale = np.float32(1.0 / (255.0 * std))
    shift = np.float32(mean / std)

    def split(images: np.ndarray, labels: np.ndarray):
        x = images[:, None].astype(np.float32)
        x *= scale
        x -= shift
        return make_split(x, labels)

    return DataSplits(
        name=name,
        train=split(pixels, train_y[train_idx]),
        val=split(train_x[val_idx], train_y[val_idx]),
        test=split(test_x, test_y),
        classes=list(CLASSES[name]),
        normalization={"scale": 1 / 255, "mean": mean, "std": std, "files": {k: str(p) for k, p in paths.items()},
                       "split": f"official test; train/val = stratified_holdout(N // {VAL_FRACTION}, seed={SPLIT_SEED})"},
    )


def load_fashion_mnist(cfg: DataConfig) -> DataSplits:
    return load(cfg, "fashion-mnist")


def load_mnist(cfg: DataConfig) -> DataSplits:
    return load(cfg, "mnist")
