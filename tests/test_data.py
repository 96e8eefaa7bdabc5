"""The data sets and batching of `kdistill.data`: digits splits, batching and tensor augmentations; the
vision data sets: IDX (Fashion-MNIST, MNIST), CIFAR pickles, image folders.

Each vision format is tested on a tiny data set written here in the exact on-disk format. Nothing
is ever downloaded: urllib is blocked in every test, and the download path is exercised
with a replaced `fetch`.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import shutil
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from kdistill.cli import main
from kdistill.config import DataConfig
from kdistill.data import LOADERS, Split, cifar, digits, idx, iterate_batches, load_dataset
from kdistill.data.augment import AUGMENTATIONS, build_augmentation, hflip, random_crop
from kdistill.data.splits import stratified_holdout
from kdistill.errors import KdistillError

SPLITS = ("train", "val", "test")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _offline_and_private_cache(monkeypatch, tmp_path):
    """No test may reach the network or the user's real cache."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="module")
def data():
    return digits.load()


@pytest.fixture(scope="module")
def raw():
    bunch = load_digits()
    return bunch.data.astype(np.int64), bunch.target.astype(np.int64)


def _original_indices(data, split_name: str, raw_rows: np.ndarray) -> np.ndarray:
    """Undo the standardisation, recover the 0..16 pixel counts, and find each row in load_digits."""
    norm = data.normalization
    x = data.split(split_name).inputs.numpy().reshape(len(data.split(split_name)), -1).astype(np.float64)
    pixels = (x * norm["std"] + norm["mean"]) * 16
    counts = np.rint(pixels).astype(np.int64)
    assert np.abs(pixels - counts).max() < 1e-3  # really integer pixel counts
    lookup = {row.tobytes(): i for i, row in enumerate(raw_rows)}
    assert len(lookup) == len(raw_rows)  # digits has no duplicate images, so a row names one sample
    return np.array([lookup[row.tobytes()] for row in counts])


# --- digits -----------------------------------------------------------------------------------

def test_digits_split_sizes_and_shapes(data):
    sizes = [len(data.split(s)) for s in SPLITS]
    assert sum(sizes) == 1797
    assert sizes[0] == pytest.approx(0.6 * 1797, abs=2)
    assert sizes[1] == pytest.approx(0.2 * 1797, abs=2)
    assert sizes[2] == pytest.approx(0.2 * 1797, abs=2)
    for name in SPLITS:
        split = data.split(name)
        assert split.inputs.shape == (len(split), 1, 8, 8)
        assert split.inputs.dtype == torch.float32
        assert split.labels.shape == (len(split),)
        assert split.labels.dtype == torch.int64
    assert data.input_shape == (1, 8, 8)
    assert data.num_classes == 10


def test_digits_splits_are_disjoint_and_cover_the_data_with_correct_labels(data, raw):
    raw_rows, raw_labels = raw
    found = {name: _original_indices(data, name, raw_rows) for name in SPLITS}
    sets = {name: set(idx.tolist()) for name, idx in found.items()}
    for name in SPLITS:
        assert len(sets[name]) == len(found[name])  # no sample twice inside a split
        assert np.array_equal(raw_labels[found[name]], data.split(name).labels.numpy())
    assert not sets["train"] & sets["val"]
    assert not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    assert sets["train"] | sets["val"] | sets["test"] == set(range(1797))


def test_digits_splits_are_stratified(data, raw):
    _, labels = raw
    overall = np.bincount(labels, minlength=10) / len(labels)
    for name in SPLITS:
        split_labels = data.split(name).labels.numpy()
        share = np.bincount(split_labels, minlength=10) / len(split_labels)
        assert np.abs(share - overall).max() < 0.02, (name, share - overall)


def test_digits_is_identical_across_loads(data):
    again = digits.load()
    for name in SPLITS:
        assert torch.equal(data.split(name).inputs, again.split(name).inputs)
        assert torch.equal(data.split(name).labels, again.split(name).labels)
    assert data.normalization == again.normalization


def test_digits_train_split_is_standardised(data):
    x = data.train.inputs.double()
    assert abs(x.mean().item()) < 1e-5
    assert abs(x.std().item() - 1.0) < 1e-3
    # the val/test splits use the train statistics, so they are only roughly standardised
    assert abs(data.val.inputs.double().mean().item()) < 0.1
    assert data.normalization["scale"] == pytest.approx(1 / 16)


def test_load_dataset_by_name():
    loaded = load_dataset(DataConfig(name="digits"))
    assert loaded.name == "digits"
    assert len(loaded.train) + len(loaded.val) + len(loaded.test) == 1797


def test_load_dataset_unknown_name_lists_known():
    with pytest.raises(KdistillError) as info:
        load_dataset(DataConfig(name="imagenet"))
    msg = str(info.value)
    assert "'imagenet'" in msg
    assert f"known: {', '.join(sorted(LOADERS))}" in msg
    assert "digits" in msg


def test_split_lookup_rejects_unknown_name(data):
    with pytest.raises(ValueError, match="holdout"):
        data.split("holdout")


# --- iterate_batches --------------------------------------------------------------------------

def _toy_split(n: int) -> Split:
    return Split(torch.arange(n, dtype=torch.float32)[:, None] * 10, torch.arange(n) % 3)


def test_iterate_batches_without_shuffle_is_in_order():
    split = _toy_split(10)
    batches = list(iterate_batches(split, 4))
    assert [b.index.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for b in batches:
        assert torch.equal(b.inputs, split.inputs[b.index])
        assert torch.equal(b.labels, split.labels[b.index])


def test_iterate_batches_shuffle_covers_every_index_once():
    split = _toy_split(23)
    g = torch.Generator().manual_seed(3)
    orders = []
    for _ in range(3):  # several epochs from the same generator
        batches = list(iterate_batches(split, 5, shuffle=True, generator=g))
        assert [len(b.index) for b in batches] == [5, 5, 5, 5, 3]
        idx = torch.cat([b.index for b in batches])
        assert sorted(idx.tolist()) == list(range(23))
        for b in batches:  # inputs/labels belong to their index
            assert torch.equal(b.inputs, split.inputs[b.index])
            assert torch.equal(b.labels, split.labels[b.index])
        orders.append(idx.tolist())
    assert orders[0] != list(range(23))  # actually shuffled
    assert orders[0] != orders[1]  # a new order each epoch


def test_iterate_batches_same_seed_same_order():
    split = _toy_split(30)

    def order(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.cat([b.index for b in iterate_batches(split, 7, shuffle=True, generator=g)]).tolist()

    assert order(5) == order(5)
    assert order(5) != order(6)


def test_iterate_batches_drop_last():
    split = _toy_split(10)
    kept = list(iterate_batches(split, 4, drop_last=True))
    assert [b.index.tolist() for b in kept] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # nothing to drop when the batch size divides n
    assert len(list(iterate_batches(split, 5, drop_last=True))) == 2
    g = torch.Generator().manual_seed(0)
    shuffled = list(iterate_batches(split, 3, shuffle=True, generator=g, drop_last=True))
    assert [len(b.index) for b in shuffled] == [3, 3, 3]
    assert len(set(torch.cat([b.index for b in shuffled]).tolist())) == 9


def test_iterate_batches_drop_last_keeps_a_split_smaller_than_one_batch():
    """Current behaviour (unlike torch's DataLoader): n < batch_size still yields the one short batch."""
    batches = list(iterate_batches(_toy_split(3), 8, drop_last=True))
    assert [b.index.tolist() for b in batches] == [[0, 1, 2]]


# --- augmentations ----------------------------------------------------------------------------

def _images(n=6, c=2, h=8, w=8, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _crop_loop(images, seed, padding):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = images.shape
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=g)
    out = torch.empty_like(images)
    for i in range(n):
        padded = torch.zeros(c, h + 2 * padding, w + 2 * padding)
        padded[:, padding : padding + h, padding : padding + w] = images[i]
        y0, x0 = int(dy[i]), int(dx[i])
        out[i] = padded[:, y0 : y0 + h, x0 : x0 + w]
    return out, dy, dx


@pytest.mark.parametrize("padding", [1, 2, 3])
def test_random_crop_matches_explicit_loop(padding):
    images = _images(n=12)
    expected, dy, dx = _crop_loop(images, seed=7, padding=padding)
    assert len(set(zip(dy.tolist(), dx.tolist()))) > 1  # offsets actually vary
    got = random_crop(images, torch.Generator().manual_seed(7), padding=padding)
    assert got.shape == images.shape
    assert torch.equal(got, expected)
    # an offset of (padding, padding) is the identity; anything else moves pixels
    centred = (dy == padding) & (dx == padding)
    assert torch.equal(got[centred], images[centred])
    assert not torch.equal(got[~centred], images[~centred])


def test_random_crop_default_padding_is_h_over_8_at_least_1():
    small = _images(n=8, h=8, w=8)  # 8 // 8 = 1
    assert torch.equal(random_crop(small, torch.Generator().manual_seed(1)), _crop_loop(small, 1, 1)[0])
    big = _images(n=4, c=3, h=32, w=32)  # 32 // 8 = 4
    assert torch.equal(random_crop(big, torch.Generator().manual_seed(2)), _crop_loop(big, 2, 4)[0])
    tiny = _images(n=4, h=4, w=4)  # 4 // 8 = 0 -> 1
    assert torch.equal(random_crop(tiny, torch.Generator().manual_seed(3)), _crop_loop(tiny, 3, 1)[0])


def test_random_crop_non_square():
    images = _images(n=5, c=1, h=6, w=10)
    got = random_crop(images, torch.Generator().manual_seed(4), padding=2)
    assert got.shape == images.shape
    assert torch.equal(got, _crop_loop(images, 4, 2)[0])


def test_random_crop_is_deterministic_per_seed():
    images = _images(n=16)
    a = random_crop(images, torch.Generator().manual_seed(11), padding=2)
    b = random_crop(images, torch.Generator().manual_seed(11), padding=2)
    c = random_crop(images, torch.Generator().manual_seed(12), padding=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_hflip_flips_exactly_the_drawn_images():
    images = _images(n=16)
    draw = torch.rand(16, generator=torch.Generator().manual_seed(9))
    flip = draw < 0.5
    assert 0 < int(flip.sum()) < 16  # both cases are exercised
    got = hflip(images, torch.Generator().manual_seed(9))
    assert got.shape == images.shape
    for i in range(16):
        if flip[i]:
            expected = images[i][:, :, torch.arange(7, -1, -1)]  # column j <- column 7 - j
            assert torch.equal(got[i], expected), i
            assert not torch.equal(got[i], images[i])
        else:
            assert torch.equal(got[i], images[i]), i
    assert got.data_ptr() != images.data_ptr()  # a new batch, input untouched
    assert torch.equal(images, _images(n=16))


def test_hflip_is_deterministic_per_seed():
    images = _images(n=32)
    a = hflip(images, torch.Generator().manual_seed(1))
    b = hflip(images, torch.Generator().manual_seed(1))
    c = hflip(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_build_augmentation_composes_in_order():
    images = _images(n=10)
    aug = build_augmentation(["random-crop", "hflip"], (2, 8, 8))
    g = torch.Generator().manual_seed(5)
    expected = hflip(random_crop(images, g), g)
    got = aug(images, torch.Generator().manual_seed(5))
    assert torch.equal(got, expected)
    assert not torch.equal(got, images)


def test_build_augmentation_empty_is_none():
    assert build_augmentation([], (1, 8, 8)) is None


def test_build_augmentation_unknown_name():
    with pytest.raises(KdistillError) as info:
        build_augmentation(["hflip", "cutout"], (1, 8, 8))
    msg = str(info.value)
    assert "'cutout'" in msg
    for known in AUGMENTATIONS:
        assert known in msg


@pytest.mark.parametrize("shape", [(64,), (8, 8), (1, 1, 8, 8)])
def test_build_augmentation_needs_image_inputs(shape):
    with pytest.raises(KdistillError, match="image inputs") as info:
        build_augmentation(["hflip"], shape)
    assert str(shape) in str(info.value)


def test_train_samples_keeps_a_fixed_stratified_subset_of_train_only(data):
    """data.train_samples: N training rows drawn per class, the same on every load; val/test untouched."""
    cfg = DataConfig(name="digits", train_samples=200)
    small, again = load_dataset(cfg), load_dataset(cfg)
    assert len(small.train) == 200
    assert torch.equal(small.train.inputs, again.train.inputs) and torch.equal(small.train.labels, again.train.labels)
    full_rows = {row.numpy().tobytes(): label for row, label in zip(data.train.inputs, data.train.labels.tolist())}
    assert all(full_rows.get(row.numpy().tobytes()) == label for row, label in zip(small.train.inputs, small.train.labels.tolist()))
    full_counts = torch.bincount(data.train.labels, minlength=10).double()
    counts = torch.bincount(small.train.labels, minlength=10).double()
    assert (counts - 200 * full_counts / len(data.train)).abs().max() < 1  # stratified: within one of the class share
    for name in ("val", "test"):
        assert torch.equal(small.split(name).inputs, data.split(name).inputs)
    assert small.normalization["mean"] == data.normalization["mean"]  # normalised with the full train split's statistics
    assert small.normalization["train_samples"].startswith("200 of ")


@pytest.mark.parametrize("n, needle", [(100_000, "not fewer than"), (5, "fewer than the 10 classes")])
def test_train_samples_out_of_range_is_a_user_error(n, needle):
    with pytest.raises(KdistillError, match=needle):
        load_dataset(DataConfig(name="digits", train_samples=n))


def _names_in(splits) -> None:
    for part in (splits.train, splits.val, splits.test):
        assert part.inputs.dtype == torch.float32 and part.labels.dtype == torch.int64
        assert part.inputs.shape[0] == part.labels.shape[0]


# --- stratified_holdout -----------------------------------------------------------------------

def test_stratified_holdout_is_exact_disjoint_and_stable():
    labels = np.repeat(np.arange(10), 600)
    keep, held = stratified_holdout(labels, 500, seed=0)
    assert len(held) == 500 and len(keep) == 5500
    assert not set(keep) & set(held) and sorted([*keep, *held]) == list(range(6000))
    assert np.bincount(labels[held]).tolist() == [50] * 10
    again = stratified_holdout(labels, 500, seed=0)
    assert np.array_equal(held, again[1]) and np.array_equal(keep, again[0])
    assert not np.array_equal(held, stratified_holdout(labels, 500, seed=1)[1])
    # leftovers go to the largest remainders, ties to the smaller label
    uneven = np.array([0] * 5 + [1] * 3 + [2] * 2)  # shares 1.5, 0.9, 0.6
    assert np.bincount(uneven[stratified_holdout(uneven, 3, 0)[1]], minlength=3).tolist() == [1, 1, 1]
    tie = np.array([1] * 5 + [0] * 5)  # shares 0.5, 0.5
    assert tie[stratified_holdout(tie, 1, 0)[1]].tolist() == [0]


# --- IDX: Fashion-MNIST / MNIST ---------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    magic = 2051 if array.ndim == 3 else 2049
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, *, gz=(), n_train=120, n_test=20, hw=(6, 5), seed=0) -> dict:
    """Four IDX files (the names in `gz` gzipped); 12 train images per class; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.permutation(np.arange(n_test, dtype=np.uint8) % 10),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = idx_bytes(array)
        if stem in gz or gz == "all":
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


def _pixels(split, norm) -> np.ndarray:
    """Undo the load-time normalisation of a one-channel split: back to 0..255 integers."""
    x = split.inputs.double().numpy()[:, 0] * norm["std"] + norm["mean"]
    pixels = np.rint(x * 255)
    assert np.abs(x * 255 - pixels).max() < 1e-3
    return pixels.astype(np.uint8)


@pytest.mark.parametrize("name,gz", [("mnist", ()), ("fashion-mnist", "all"),
                                     ("mnist", ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))])
def test_idx_loads_shapes_labels_and_classes(tmp_path, name, gz):
    arrays = write_idx_set(tmp_path / "raw", gz=gz)
    data = load_dataset(DataConfig(name=name, root=str(tmp_path / "raw")))
    _names_in(data)
    assert [len(data.train), len(data.val), len(data.test)] == [110, 10, 20]
    assert data.input_shape == (1, 6, 5)
    assert data.classes == idx.CLASSES[name] and len(data.classes) == 10
    if name == "fashion-mnist":
        assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    # the official test set is the test split, in file order
    assert np.array_equal(_pixels(data.test, data.normalization), arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(data.test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    # train and val are a disjoint cover of the official training set, labels kept with their image
    images, labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    lookup = {img.tobytes(): i for i, img in enumerate(images)}
    assert len(lookup) == len(images)
    rows = {}
    for part in ("train", "val"):
        split = data.split(part)
        rows[part] = [lookup[img.tobytes()] for img in _pixels(split, data.normalization)]
        assert np.array_equal(labels[rows[part]], split.labels.numpy())
    assert not set(rows["train"]) & set(rows["val"])
    assert sorted(rows["train"] + rows["val"]) == list(range(120))
    assert np.bincount(data.val.labels.numpy(), minlength=10).tolist() == [1] * 10  # stratified


def test_idx_normalisation_uses_train_statistics_and_is_deterministic(tmp_path):
    arrays = write_idx_set(tmp_path / "raw")
    cfg = DataConfig(name="mnist", root=str(tmp_path / "raw"))
    data = load_dataset(cfg)
    keep, _ = stratified_holdout(arrays["train-labels-idx1-ubyte"], 10, idx.SPLIT_SEED)
    train_pixels = arrays["train-images-idx3-ubyte"][keep] / 255.0
    assert data.normalization["mean"] == pytest.approx(train_pixels.mean(), abs=1e-9)
    assert data.normalization["std"] == pytest.approx(train_pixels.std(), abs=1e-9)
    assert data.normalization["scale"] == pytest.approx(1 / 255)
    x = data.train.inputs.double()
    assert abs(x.mean().item()) < 1e-5 and abs(x.std(unbiased=False).item() - 1) < 1e-4
    again = load_dataset(cfg)
    for part in ("train", "val", "test"):
        assert torch.equal(data.split(part).inputs, again.split(part).inputs)
        assert torch.equal(data.split(part).labels, again.split(part).labels)


def test_idx_search_order_root_then_system_then_cache(tmp_path, monkeypatch):
    system, cache = tmp_path / "system", tmp_path / "xdg-cache" / "kdistill" / "fashion-mnist"
    monkeypatch.setitem(idx.SYSTEM_DIRS, "fashion-mnist", [system])
    assert idx.cache_dir("fashion-mnist") == cache
    write_idx_set(cache, seed=1)
    cfg = DataConfig(name="fashion-mnist")
    assert load_dataset(cfg).normalization["files"]["train_images"] == str(cache / "train-images-idx3-ubyte")
    write_idx_set(system, gz="all", seed=2)
    assert load_dataset(cfg).normalization["files"]["train_images"] == str(system / "train-images-idx3-ubyte.gz")
    write_idx_set(tmp_path / "mine", seed=3)
    mine = load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path / "mine")))
    assert mine.normalization["files"]["test_labels"] == str(tmp_path / "mine" / "t10k-labels-idx1-ubyte")
    # a root that lacks the files is an error, not a fall-back to the other places
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdistillError, match="were not found") as info:
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path / "empty")))
    assert str(tmp_path / "empty") in str(info.value) and "data.download: true" in str(info.value)


def test_idx_cache_defaults_to_home_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert idx.cache_dir("mnist") == tmp_path / "home" / ".cache" / "kdistill" / "mnist"


def test_idx_not_found_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setitem(idx.SYSTEM_DIRS, "fashion-mnist", [tmp_path / "nowhere"])
    write_idx_set(idx.cache_dir("fashion-mnist"))
    (idx.cache_dir("fashion-mnist") / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(KdistillError) as info:
        load_dataset(DataConfig(name="fashion-mnist"))
    msg = str(info.value)
    assert str(tmp_path / "nowhere") in msg and "missing t10k-labels-idx1-ubyte" in msg
    assert "data.root" in msg and "data.download: true" in msg
    with pytest.raises(KdistillError, match="data.root") as info:
        load_dataset(DataConfig(name="mnist"))
    assert "download" not in str(info.value)  # no checksums for MNIST, so no download hint


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _append(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0")


def _gzip_garbage(path: Path) -> Path:
    path.unlink()
    bad = path.with_name(path.name + ".gz")
    bad.write_bytes(b"this is not gzip data at all")
    return bad


def _gzip_cut(path: Path) -> Path:
    path.unlink()
    bad = path.with_name(path.name + ".gz")
    bad.write_bytes(gzip.compress(idx_bytes(np.zeros((120, 6, 5), np.uint8)))[:40])
    return bad


BAD_IDX = {
    "wrong magic": ("train-images-idx3-ubyte", lambda p: p.write_bytes(idx_bytes(np.zeros(120, np.uint8))), "magic number 2049, expected 2051"),
    "labels with images magic": ("t10k-labels-idx1-ubyte", lambda p: p.write_bytes(idx_bytes(np.zeros((20, 1, 1), np.uint8))), "magic number 2051, expected 2049"),
    "truncated images": ("train-images-idx3-ubyte", _truncate, "truncated"),
    "trailing bytes": ("t10k-images-idx3-ubyte", _append, "longer than its header says"),
    "shorter than header": ("train-labels-idx1-ubyte", lambda p: p.write_bytes(b"\0\0\x08"), "truncated"),
    "corrupt gzip": ("train-labels-idx1-ubyte", _gzip_garbage, "corrupt gzip"),
    "cut-off gzip": ("train-images-idx3-ubyte", _gzip_cut, "corrupt gzip"),
    "label count": ("train-labels-idx1-ubyte", lambda p: p.write_bytes(idx_bytes(np.zeros(119, np.uint8))), "119 labels but"),
    "label out of range": ("t10k-labels-idx1-ubyte", lambda p: p.write_bytes(idx_bytes(np.full(20, 10, np.uint8))), "label 10 at index 0 is out of range 0..9"),
}


@pytest.mark.parametrize("case", sorted(BAD_IDX))
def test_idx_bad_files_are_named(tmp_path, case):
    stem, damage, expected = BAD_IDX[case]
    folder = tmp_path / "raw"
    write_idx_set(folder)
    target = folder / stem
    named = damage(target)
    named = named if isinstance(named, Path) else target  # the gzip cases replace the file with FILE.gz
    with pytest.raises(KdistillError) as info:
        load_dataset(DataConfig(name="mnist", root=str(folder)))
    assert str(named) in str(info.value)
    assert expected in str(info.value)


# --- IDX downloads (never over the network) ---------------------------------------------------

def _fake_fetch(contents: dict[str, bytes], calls: list[str]):
    def fetch(url: str, dest: Path) -> None:
        calls.append(url)
        dest.write_bytes(contents[url.rsplit("/", 1)[1]])
    return fetch


def _tiny_download(monkeypatch, tmp_path):
    """Tiny IDX files served by a fake fetch, with their content hashes as the expected checksums."""
    arrays = write_idx_set(tmp_path / "served")
    raw = {stem: idx_bytes(a) for stem, a in arrays.items()}
    checksums = {stem: hashlib.sha256(data).hexdigest() for stem, data in raw.items()}
    monkeypatch.setitem(idx.DOWNLOADS, "fashion-mnist", ("https://example.invalid/fmnist/", checksums))
    monkeypatch.setitem(idx.SYSTEM_DIRS, "fashion-mnist", [])
    return {f"{stem}.gz": gzip.compress(data) for stem, data in raw.items()}


def test_download_verifies_then_keeps_files_in_the_cache(tmp_path, monkeypatch):
    served = _tiny_download(monkeypatch, tmp_path)
    calls: list[str] = []
    monkeypatch.setattr(idx, "fetch", _fake_fetch(served, calls))
    with pytest.raises(KdistillError, match="data.download: true"):
        load_dataset(DataConfig(name="fashion-mnist"))  # download is never implicit
    assert calls == []
    data = load_dataset(DataConfig(name="fashion-mnist", download=True))
    assert [len(data.train), len(data.val), len(data.test)] == [110, 10, 20]
    cache = idx.cache_dir("fashion-mnist")
    assert sorted(p.name for p in cache.iterdir()) == sorted(served)  # no temp files left
    assert calls == [f"https://example.invalid/fmnist/{name}" for name in
                     ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
    load_dataset(DataConfig(name="fashion-mnist", download=True))
    assert len(calls) == 4  # found in the cache: nothing fetched again


def test_download_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch):
    served = _tiny_download(monkeypatch, tmp_path)
    served["t10k-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(np.ones((20, 6, 5), np.uint8)))
    monkeypatch.setattr(idx, "fetch", _fake_fetch(served, []))
    with pytest.raises(KdistillError) as info:
        load_dataset(DataConfig(name="fashion-mnist", download=True))
    msg = str(info.value)
    assert "https://example.invalid/fmnist/t10k-images-idx3-ubyte.gz" in msg and "checksum" in msg and "not kept" in msg
    remaining = sorted(p.name for p in idx.cache_dir("fashion-mnist").iterdir())
    assert remaining == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]  # the verified ones only


def test_download_into_root_and_failures(tmp_path, monkeypatch):
    served = _tiny_download(monkeypatch, tmp_path)
    served["train-labels-idx1-ubyte.gz"] = b"<html>not gzip</html>"
    monkeypatch.setattr(idx, "fetch", _fake_fetch(served, []))
    root = tmp_path / "mine"
    with pytest.raises(KdistillError, match="corrupt gzip"):
        load_dataset(DataConfig(name="fashion-mnist", root=str(root), download=True))
    assert sorted(p.name for p in root.iterdir()) == ["train-images-idx3-ubyte.gz"]

    def unreachable(url, dest):
        dest.write_bytes(b"partial")
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(idx, "fetch", unreachable)
    with pytest.raises(KdistillError, match="could not fetch .*no route to host"):
        load_dataset(DataConfig(name="fashion-mnist", root=str(root), download=True))
    assert sorted(p.name for p in root.iterdir()) == ["train-images-idx3-ubyte.gz"]


def test_mnist_download_is_refused_without_checksums(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "fetch", lambda url, dest: pytest.fail("fetched"))
    with pytest.raises(KdistillError, match="only supported for fashion-mnist.*data.root"):
        load_dataset(DataConfig(name="mnist", download=True))
    write_idx_set(tmp_path / "raw")  # with the files in place, download: true is harmless
    assert len(load_dataset(DataConfig(name="mnist", root=str(tmp_path / "raw"), download=True)).test) == 20


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_download_checksums_match_the_real_fashion_mnist_files(tmp_path, monkeypatch):
    """The real constants: the labels are 'downloaded' from the Debian copy and verified."""
    root = tmp_path / "fmnist"
    root.mkdir()
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (root / f"{stem}.gz").symlink_to(FASHION_DIR / f"{stem}.gz")
        digest = hashlib.sha256(gzip.decompress((FASHION_DIR / f"{stem}.gz").read_bytes())).hexdigest()
        assert digest == idx.FASHION_MNIST_SHA256[stem]
    monkeypatch.setattr(idx, "fetch", lambda url, dest: shutil.copyfile(FASHION_DIR / url.rsplit("/", 1)[1], dest))
    paths = idx.download("fashion-mnist", root)
    assert paths["train_labels"] == root / "train-labels-idx1-ubyte.gz"
    assert (root / "t10k-labels-idx1-ubyte.gz").read_bytes() == (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(monkeypatch):
    t0 = time.perf_counter()
    data = load_dataset(DataConfig(name="fashion-mnist"))
    seconds = time.perf_counter() - t0
    assert seconds < 6, f"loading Fashion-MNIST took {seconds:.1f} s"
    assert [len(data.train), len(data.val), len(data.test)] == [55000, 5000, 10000]
    assert data.input_shape == (1, 28, 28)
    assert data.classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert data.normalization["files"]["train_images"] == str(FASHION_DIR / "train-images-idx3-ubyte.gz")
    assert (data.normalization["mean"], data.normalization["std"]) == pytest.approx(idx.FASHION_MNIST_STATS, abs=1e-6)
    assert np.bincount(data.val.labels.numpy()).tolist() == [500] * 10
    assert np.bincount(data.test.labels.numpy()).tolist() == [1000] * 10
    assert abs(data.train.inputs.mean().item()) < 1e-4


# --- CIFAR ------------------------------------------------------------------------------------

def _s(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)


def _j(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def py2_batch(data: np.ndarray, labels, label_key: bytes) -> bytes:
    """A batch pickled the way Python 2's cPickle wrote the real CIFAR files (protocol 2, str -> bytes)."""
    n, m = data.shape
    out = b"\x80\x02}(" + _s(b"data") + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _j(0) + b"\x85" + _s(b"b") + b"\x87R"
    out += b"(" + _j(1) + _j(n) + _j(m) + b"\x86" + b"cnumpy\ndtype\n" + _s(b"u1") + b"\x89\x88\x87R"
    out += b"(" + _j(3) + _s(b"|") + b"NNN" + _j(-1) + _j(-1) + _j(0) + b"tb" + b"\x89" + _s(data.tobytes()) + b"tb"
    out += _s(label_key) + b"](" + b"".join(_j(int(v)) for v in labels) + b"e"
    out += _s(b"batch_label") + _s(b"training batch") + b"u."
    return out


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(parent: Path, per_batch=20, n_test=20, seed=0) -> dict:
    """cifar-10-batches-py/ with 5 training batches, a test batch and batches.meta, in several pickle dialects."""
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    made = {}
    for i, fname in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = n_test if fname == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.permutation(np.arange(n) % 10)]
        made[fname] = (data, labels)
        if i == 0:
            raw = py2_batch(data, labels, b"labels")
        else:
            batch = {b"batch_label": fname.encode(), b"labels": labels, b"data": data,
                     b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)]}
            raw = pickle.dumps(batch, protocol=[2, 4, 5, 2, 3][i - 1])
        (folder / fname).write_bytes(raw)
    meta = {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return made


def write_cifar100(parent: Path, n_train=200, n_test=100, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    made = {}
    for fname, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.permutation(np.arange(n) % 100)]
        made[fname] = (data, fine)
        batch = {b"filenames": [b"x.png"] * n, b"batch_label": fname.encode(), b"fine_labels": fine,
                 b"coarse_labels": [v // 5 for v in fine], b"data": data}
        (folder / fname).write_bytes(pickle.dumps(batch))
    meta = {b"fine_label_names": [f"class_{i:03d}".encode() for i in range(100)],
            b"coarse_label_names": [f"super_{i:02d}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return made


def _cifar_rows(split, norm) -> np.ndarray:
    """Undo the per-channel normalisation: back to (N, 3072) uint8 rows in the file's layout."""
    mean = torch.tensor(norm["mean"], dtype=torch.float64)[:, None, None]
    std = torch.tensor(norm["std"], dtype=torch.float64)[:, None, None]
    x = (split.inputs.double() * std + mean) * 255
    pixels = torch.round(x)
    assert (x - pixels).abs().max() < 1e-3
    return pixels.to(torch.uint8).reshape(len(split), -1).numpy()


def test_cifar10_loads_from_folder_or_parent(tmp_path):
    made = write_cifar10(tmp_path)
    data = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    _names_in(data)
    assert [len(data.train), len(data.val), len(data.test)] == [90, 10, 20]
    assert data.input_shape == (3, 32, 32)
    assert data.classes == CIFAR10_NAMES
    assert data.normalization["mean"] == [0.4914, 0.4822, 0.4465]
    assert data.normalization["std"] == [0.2470, 0.2435, 0.2616]
    test_data, test_labels = made["test_batch"]
    assert np.array_equal(_cifar_rows(data.test, data.normalization), test_data)
    assert data.test.labels.tolist() == test_labels
    # channel layout: the first 1024 values of a row are the red plane, row-major
    red = (data.test.inputs[0, 0].double() * 0.2470 + 0.4914) * 255
    assert torch.equal(torch.round(red).to(torch.uint8), torch.from_numpy(test_data[0, :1024].reshape(32, 32)))
    # train + val: a disjoint cover of the five batches, labels kept with their image
    all_data = np.concatenate([made[f"data_batch_{k}"][0] for k in range(1, 6)])
    all_labels = np.concatenate([made[f"data_batch_{k}"][1] for k in range(1, 6)])
    lookup = {row.tobytes(): i for i, row in enumerate(all_data)}
    seen = []
    for part in ("train", "val"):
        rows = [lookup[r.tobytes()] for r in _cifar_rows(data.split(part), data.normalization)]
        assert np.array_equal(all_labels[rows], data.split(part).labels.numpy())
        seen.append(set(rows))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(100))
    assert np.bincount(data.val.labels.numpy(), minlength=10).tolist() == [1] * 10
    inner = load_dataset(DataConfig(name="cifar10", root=str(tmp_path / "cifar-10-batches-py")))
    for part in ("train", "val", "test"):
        assert torch.equal(inner.split(part).inputs, data.split(part).inputs)
        assert torch.equal(inner.split(part).labels, data.split(part).labels)


def test_cifar100_fine_labels_and_names(tmp_path):
    made = write_cifar100(tmp_path)
    data = load_dataset(DataConfig(name="cifar100", root=str(tmp_path)))
    _names_in(data)
    assert [len(data.train), len(data.val), len(data.test)] == [180, 20, 100]
    assert data.classes == [f"class_{i:03d}" for i in range(100)]
    assert data.test.labels.tolist() == made["test"][1]
    assert np.array_equal(_cifar_rows(data.test, data.normalization), made["test"][0])
    assert data.normalization["mean"] == [0.5071, 0.4865, 0.4409]
    assert data.normalization["std"] == [0.2673, 0.2564, 0.2762]


def _rewrite(folder: Path, fname: str, change) -> None:
    batch = cifar.read_pickle(folder / fname)
    change(batch)
    (folder / fname).write_bytes(pickle.dumps(batch))


BAD_CIFAR = {
    "missing batch": ("data_batch_3", lambda p: p.unlink(), "missing CIFAR file"),
    "missing meta": ("batches.meta", lambda p: p.unlink(), "missing CIFAR file"),
    "truncated pickle": ("data_batch_2", lambda p: p.write_bytes(p.read_bytes()[:5000]), "truncated or corrupt pickle"),
    "truncated py2 pickle": ("data_batch_1", lambda p: p.write_bytes(p.read_bytes()[:-40]), "truncated or corrupt pickle"),
    "garbage": ("test_batch", lambda p: p.write_bytes(b"\x00garbage" * 10), "truncated or corrupt pickle"),
    "not a dict": ("data_batch_4", lambda p: p.write_bytes(pickle.dumps([1, 2, 3])), "expected a dict"),
    "wrong shape": ("data_batch_5", lambda p: _rewrite(p.parent, p.name, lambda b: b.update({b"data": b[b"data"][:, :3071]})), "(N, 3072) uint8"),
    "wrong dtype": ("data_batch_2", lambda p: _rewrite(p.parent, p.name, lambda b: b.update({b"data": b[b"data"].astype(np.float32)})), "float32"),
    "no labels": ("test_batch", lambda p: _rewrite(p.parent, p.name, lambda b: b.pop(b"labels")), "no 'labels' entry"),
    "label count": ("data_batch_3", lambda p: _rewrite(p.parent, p.name, lambda b: b[b"labels"].pop()), "19 labels for 20 images"),
    "label out of range": ("data_batch_4", lambda p: _rewrite(p.parent, p.name, lambda b: b[b"labels"].__setitem__(3, 10)), "label 10 at index 3 is out of range 0..9"),
    "negative label": ("test_batch", lambda p: _rewrite(p.parent, p.name, lambda b: b[b"labels"].__setitem__(0, -1)), "out of range"),
    "text labels": ("data_batch_1", lambda p: _rewrite(p.parent, p.name, lambda b: b.update({b"labels": [b"cat"] * 20})), "list of integers"),
    "meta names": ("batches.meta", lambda p: _rewrite(p.parent, p.name, lambda b: b[b"label_names"].pop()), "must list 10 class names, got 9"),
}


@pytest.mark.parametrize("case", sorted(BAD_CIFAR))
def test_cifar_bad_files_are_named(tmp_path, case):
    fname, damage, expected = BAD_CIFAR[case]
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / fname
    damage(path)
    with pytest.raises(KdistillError) as info:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_cifar_root_errors(tmp_path):
    with pytest.raises(KdistillError, match="needs data.root"):
        load_dataset(DataConfig(name="cifar10"))
    with pytest.raises(KdistillError, match="cannot download cifar100"):
        load_dataset(DataConfig(name="cifar100", root=str(tmp_path), download=True))
    with pytest.raises(KdistillError, match="not a cifar100 folder: expected cifar-100-python/"):
        load_dataset(DataConfig(name="cifar100", root=str(tmp_path)))
    with pytest.raises(KdistillError, match="is not a folder"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path / "absent")))


class _Exploit:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_unpickler_refuses_code_and_never_runs_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Exploit(f"echo pwned > {marker}"), b"labels": [0]})
    write_cifar10(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    target.write_bytes(payload)
    with pytest.raises(KdistillError) as info:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    msg = str(info.value)
    assert str(target) in msg and "refused to unpickle" in msg and f"{os.system.__module__}.system" in msg
    assert not marker.exists()
    # the same refusal for other ways in: eval, a subprocess, getattr, numpy.load
    for module, name in (("builtins", "eval"), ("subprocess", "Popen"), ("builtins", "getattr"), ("numpy", "load")):
        raw = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x04\x00\x00\x00argsq\x00\x85R."
        (tmp_path / "evil").write_bytes(raw)
        with pytest.raises(KdistillError, match=f"asks for {module}.{name}"):
            cifar.read_pickle(tmp_path / "evil")
    assert not marker.exists()


# --- imagefolder ------------------------------------------------------------------------------

def write_imagefolder(root: Path, classes=("dog", "ant", "cat"), counts=None, size=(6, 5), mode="RGB",
                      ext="png", seed=0) -> dict:
    """root/<split>/<class>/<i>.<ext> with random pixels; returns {split: [(array, class), ...]} in load order."""
    counts = counts or {"train": 4, "val": 2, "test": 2}
    rng = np.random.default_rng(seed)
    made = {}
    for split, n in counts.items():
        made[split] = []
        for cls in sorted(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:02d}.{ext}")
                made[split].append((pixels, cls))
    return made


def _image_pixels(split, norm) -> np.ndarray:
    mean = torch.tensor(norm["mean"], dtype=torch.float64)[:, None, None]
    std = torch.tensor(norm["std"], dtype=torch.float64)[:, None, None]
    x = (split.inputs.double() * std + mean) * 255
    assert (x - torch.round(x)).abs().max() < 1e-3
    return torch.round(x).to(torch.uint8).numpy()


def test_imagefolder_rgb_with_test_split(tmp_path):
    made = write_imagefolder(tmp_path / "imgs")
    (tmp_path / "imgs" / "train" / "cat" / "notes.txt").write_text("ignored")
    (tmp_path / "imgs" / "train" / "cat" / ".hidden.png").write_bytes(b"ignored")
    data = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "imgs")))
    _names_in(data)
    assert data.classes == ["ant", "cat", "dog"]
    assert [len(data.train), len(data.val), len(data.test)] == [12, 6, 6]
    assert data.input_shape == (3, 5, 6)  # Pillow's size is (width, height)
    assert data.normalization["test_source"] == "test" and data.normalization["mode"] == "RGB"
    for part in ("train", "val", "test"):
        split = data.split(part)
        assert split.labels.tolist() == [data.classes.index(cls) for _, cls in made[part]]
        pixels = _image_pixels(split, data.normalization)
        for got, (expected, _) in zip(pixels, made[part]):
            assert np.array_equal(got.transpose(1, 2, 0), expected)
    # per-channel train statistics
    train = np.stack([a for a, _ in made["train"]]).reshape(-1, 3) / 255.0
    assert data.normalization["mean"] == pytest.approx(train.mean(axis=0).tolist(), abs=1e-9)
    assert data.normalization["std"] == pytest.approx(train.std(axis=0).tolist(), abs=1e-9)
    x = data.train.inputs.double()
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert (x.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-4
    again = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "imgs")))
    assert torch.equal(again.train.inputs, data.train.inputs) and torch.equal(again.test.labels, data.test.labels)


def test_imagefolder_greyscale_without_test_uses_val(tmp_path, caplog):
    write_imagefolder(tmp_path, counts={"train": 3, "val": 2}, mode="L", ext="jpg")
    with caplog.at_level(logging.WARNING, logger="kdistill.data.imagefolder"):
        data = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))
    assert data.input_shape == (1, 5, 6) and data.normalization["mode"] == "L"
    assert data.normalization["test_source"] == "val (no test/ folder)"
    assert "test split is the validation split" in caplog.text
    assert torch.equal(data.test.inputs, data.val.inputs) and torch.equal(data.test.labels, data.val.labels)
    assert [len(data.train), len(data.val), len(data.test)] == [9, 6, 6]


def test_imagefolder_mixed_modes_become_rgb(tmp_path):
    write_imagefolder(tmp_path, counts={"train": 2, "val": 1}, mode="L")
    grey = np.asarray(Image.open(tmp_path / "val" / "ant" / "00.png"))
    Image.fromarray(np.zeros((5, 6, 4), np.uint8) + 9).save(tmp_path / "train" / "ant" / "rgba.png")  # RGBA
    data = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))
    assert data.input_shape == (3, 5, 6) and data.normalization["mode"] == "RGB"
    val0 = _image_pixels(data.val, data.normalization)[0]
    assert all(np.array_equal(val0[c], grey) for c in range(3))  # grey replicated to R, G, B


def test_imagefolder_sizes_must_match_or_be_resized(tmp_path):
    write_imagefolder(tmp_path, counts={"train": 2, "val": 1})
    odd = tmp_path / "val" / "dog" / "big.png"
    Image.fromarray(np.zeros((9, 7, 3), np.uint8)).save(odd)
    with pytest.raises(KdistillError, match="image is 7x9 but .* is 6x5.*data.image_size") as info:
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))
    assert str(odd) in str(info.value)
    data = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8))
    assert data.input_shape == (3, 8, 8) and len(data.val) == 4
    assert data.normalization["resized"] is True


def _png_bytes(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)


BAD_FOLDERS = {
    "empty class folder": (lambda r: [p.unlink() for p in (r / "val" / "cat").iterdir()], "val/cat", "empty class folder"),
    "missing class in val": (lambda r: shutil.rmtree(r / "val" / "cat"), "val", "missing ['cat']"),
    "extra class in test": (lambda r: shutil.copytree(r / "test" / "cat", r / "test" / "cow"), "test", "not in train/: ['cow']"),
    "no val": (lambda r: shutil.rmtree(r / "val"), "val", "missing folder"),
    "no classes": (lambda r: [shutil.rmtree(p) for p in (r / "train").iterdir()], "train", "no class folders"),
    "not an image": (lambda r: (r / "train" / "dog" / "01.png").write_bytes(b"hello"), "train/dog/01.png", "unreadable image"),
    "truncated image": (lambda r: (r / "test" / "ant" / "00.png").write_bytes((r / "test" / "ant" / "00.png").read_bytes()[:60]), "test/ant/00.png", "unreadable image"),
    "broken png": (lambda r: _png_bytes(r / "val" / "ant" / "01.png"), "val/ant/01.png", "unreadable image"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_imagefolder_bad_trees_are_named(tmp_path, case):
    damage, where, expected = BAD_FOLDERS[case]
    write_imagefolder(tmp_path)
    damage(tmp_path)
    with pytest.raises(KdistillError) as info:
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))
    assert str(tmp_path / where) in str(info.value)
    assert expected in str(info.value)


def test_imagefolder_config_errors(tmp_path):
    with pytest.raises(KdistillError, match="needs data.root"):
        load_dataset(DataConfig(name="imagefolder"))
    with pytest.raises(KdistillError, match="is not a folder"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "absent")))
    with pytest.raises(KdistillError, match="nothing to download"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), download=True))
    with pytest.raises(KdistillError, match=r"data.image_size: only image files \(imagefolder"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), image_size=32))


# --- registry, augment, end to end ------------------------------------------------------------

def test_loaders_are_registered():
    assert set(LOADERS) == {"digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "manifest", "hf-disk"}


def test_normalize_is_an_accepted_no_op():
    assert build_augmentation(["normalize"], (64,)) is None  # not even an image check
    images = torch.randn(6, 1, 4, 4)
    aug = build_augmentation(["normalize", "hflip", "normalize"], (1, 4, 4))
    assert torch.equal(aug(images, torch.Generator().manual_seed(3)), hflip(images, torch.Generator().manual_seed(3)))


def _train_cli(tmp_path: Path, data: dict) -> Path:
    out = tmp_path / "run"
    cfg = {"name": "tiny", "data": {**data, "batch_size": 16}, "model": {"name": "cnn", "channels": [8]},
           "train": {"epochs": 3, "lr": 3e-3}, "out": str(out)}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "train.epochs=1", "-q"]) == 0
    return out


def test_train_end_to_end_on_tiny_cifar(tmp_path, capsys):
    write_cifar10(tmp_path / "data", per_batch=12, n_test=10)
    out = _train_cli(tmp_path, {"name": "cifar10", "root": str(tmp_path / "data"), "augment": ["random-crop", "hflip", "normalize"]})
    assert "cifar10" in (out / "report.json").read_text()
    assert (out / "model.safetensors").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_train_end_to_end_on_tiny_imagefolder(tmp_path):
    write_imagefolder(tmp_path / "imgs", counts={"train": 6, "val": 2}, size=(12, 12))
    out = _train_cli(tmp_path, {"name": "imagefolder", "root": str(tmp_path / "imgs"), "image_size": 8})
    assert "imagefolder" in (out / "report.json").read_text()
    assert (out / "model.safetensors").is_file()
