"""Digits splits, batching and tensor augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from kdistill.config import DataConfig
from kdistill.data import LOADERS, Split, iterate_batches, load_dataset
from kdistill.data import digits
from kdistill.data.augment import AUGMENTATIONS, build_augmentation, hflip, random_crop
from kdistill.errors import KdistillError

SPLITS = ("train", "val", "test")


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
