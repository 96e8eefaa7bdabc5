"""Transfer sets: training samples without labels, which a distilled student learns from the teacher alone.

Hinton et al. (2015) train the student on a transfer set that need not be labelled; practitioners have far
more unlabelled data than labels. A training sample whose label is `UNLABELED` (-1) contributes only the
distillation terms: label terms skip it (`methods.base.labeled_cross_entropy`).

- `data.labeled_samples: N` keeps the labels of a fixed stratified N of the training split (the same N
  `data.train_samples: N` would keep, so a student trained alone on those labels sees exactly them); in a
  distill run the other training samples stay as unlabelled transfer data, in a train run they are dropped.
- `data.unlabeled: {root: DIR}` adds every image under DIR (any depth, no class folders), decoded to the
  data set's channels and size (resized, bilinear) and normalised with the data set's own mean and std. They
  are held in memory when the labelled split is (and they fit in `data.memory_limit_mb`), and streamed
  from disk beside it when it is streamed.
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdistill.config import DataConfig
from kdistill.data.imagefolder import EXTENSIONS, decode_image
from kdistill.data.manifest import read_manifest
from kdistill.data.splits import DataSplits, Split, stratified_holdout
from kdistill.data.streaming import is_streamed, take
from kdistill.errors import KdistillError

UNLABELED = -1
SUBSET_SEED = 0  # one stratified draw for every run and seed: train_samples and labeled_samples keep the same ones
MAX_UNLABELED_FILES = 50_000_000


def stratified_keep(labels: np.ndarray, n: int, num_classes: int, key: str, what: str) -> np.ndarray:
    """The sorted indices of a stratified draw of `n` of `labels` (seed SUBSET_SEED), checked: fewer than all, and
    at least one per class. `what` names the samples in the errors ("training samples of digits")."""
    total = len(labels)
    if n >= total:
        raise KdistillError(f"data.{key}: {n} is not fewer than the {total} {what} (remove data.{key} to use them all)")
    if n < num_classes:
        raise KdistillError(f"data.{key}: {n} is fewer than the {num_classes} classes")
    _, keep = stratified_holdout(labels, n, SUBSET_SEED)
    return keep


def _keep(splits: DataSplits, n: int, key: str) -> torch.Tensor:
    return torch.from_numpy(stratified_keep(splits.train.labels.numpy(), n, splits.num_classes, key,
                                            f"training samples of {splits.name}"))


def train_subset(splits: DataSplits, n: int, key: str = "train_samples") -> DataSplits:
    """Keep a stratified draw of `n` training samples (fixed seed: every run gets the same ones).

    Validation, test and the normalisation (computed on the full training split) are unchanged,
    so runs with and without a budget are measured alike and a teacher trained on all the data
    still sees inputs normalised as it was trained.
    """
    total = len(splits.train)
    index = _keep(splits, n, key)
    train = Split(take(splits.train.inputs, index), splits.train.labels[index])
    normalization = {**splits.normalization, key: f"{n} of {total} (stratified, seed {SUBSET_SEED})"}
    return replace(splits, train=train, normalization=normalization)


def unlabel_rest(splits: DataSplits, n: int) -> DataSplits:
    """Keep the labels of the stratified `n` that `train_subset` would keep; the others become UNLABELED."""
    total = len(splits.train)
    keep = _keep(splits, n, "labeled_samples")
    labels = torch.full_like(splits.train.labels, UNLABELED)
    labels[keep] = splits.train.labels[keep]
    normalization = {**splits.normalization,
                     "labeled_samples": f"{n} of {total} (stratified, seed {SUBSET_SEED}); the rest unlabelled"}
    return replace(splits, train=Split(splits.train.inputs, labels), normalization=normalization)


def drop_unlabeled(splits: DataSplits) -> DataSplits:
    """The training split without its unlabelled samples (a run that learns from labels only)."""
    keep = torch.nonzero(splits.train.labels != UNLABELED).flatten()
    if len(keep) == len(splits.train):
        return splits
    return replace(splits, train=Split(take(splits.train.inputs, keep), splits.train.labels[keep]))


def transfer_line(labeled: int, total: int, unit: str = "samples") -> str | None:
    """The run log's line on how many training samples (or rows) carry labels, when some do not."""
    if labeled == total:
        return None
    return (f"kdistill: data: {labeled:,} labelled and {total - labeled:,} unlabelled training {unit} (the "
            "unlabelled ones learn from the teacher only)")


def transfer_note(splits: DataSplits) -> str | None:
    return transfer_line(int((splits.train.labels != UNLABELED).sum()), len(splits.train))


def _image_files(root: Path) -> list[Path]:
    """Every visible .png/.jpg/.jpeg under `root`, in sorted path order."""
    if not root.is_dir():
        raise KdistillError(f"data.unlabeled.root: {root} is not a folder")
    found: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / n for n in names if not n.startswith(".") and Path(n).suffix.lower() in EXTENSIONS]
        if len(found) > MAX_UNLABELED_FILES:
            raise KdistillError(f"data.unlabeled.root: {root} holds more than {MAX_UNLABELED_FILES:,} images")
    if not found:
        raise KdistillError(f"data.unlabeled.root: {root} holds no .png, .jpg or .jpeg images")
    return sorted(found)


def _evaluation_files(cfg: DataConfig) -> set[Path]:
    """The validation and test image files of an imagefolder or manifest data set (resolved), which transfer data
    must not hold: the student would be taught on the very images it is measured on."""
    found: set[Path] = set()
    if cfg.name == "imagefolder" and cfg.root:
        for split in ("val", "test"):
            folder = Path(cfg.root).expanduser() / split
            if folder.is_dir():
                found |= {p.resolve() for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS}
    elif cfg.name == "manifest":
        for split in ("val", "test"):
            listed = getattr(cfg, split)
            if listed:
                manifest = Path(listed).expanduser()
                found |= {(manifest.parent / Path(path).expanduser()).resolve() for _, path, _ in read_manifest(manifest)}
    return found


def _data_normalization(splits: DataSplits) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) per channel, (C, 1, 1), that turn 8-bit pixels into the data set's normalised inputs."""
    channels = splits.input_shape[0]
    norm = splits.normalization
    if "mean" not in norm or "std" not in norm:
        raise KdistillError(f"data.unlabeled: {splits.name} records no normalisation to apply to other images")

    def per_channel(value: Any) -> np.ndarray:
        flat = np.asarray(value if isinstance(value, (list, tuple)) else [value], dtype=np.float64)
        return np.broadcast_to(flat, (channels,)) if flat.size == 1 else flat

    mean, std = per_channel(norm["mean"]), per_channel(norm["std"])
    if mean.shape != (channels,) or std.shape != (channels,):
        raise KdistillError(f"data.unlabeled: {splits.name}'s normalisation does not match its {channels} channels")
    scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    shift = (mean / std).astype(np.float32)[:, None, None]
    return scale, shift


def add_unlabeled_images(splits: DataSplits, cfg: DataConfig) -> DataSplits:
    """The training split followed by every image under `cfg.unlabeled.root`, labelled UNLABELED."""
    if len(splits.input_shape) != 3 or splits.input_shape[0] not in (1, 3):
        raise KdistillError(f"data.unlabeled: images need (C, H, W) inputs with 1 or 3 channels; {splits.name} gives "
                            f"{splits.input_shape}")
    root = Path(cfg.unlabeled.root).expanduser()
    files = _image_files(root)
    if cfg.unlabeled.limit is not None:
        files = files[: cfg.unlabeled.limit]
    held_out = _evaluation_files(cfg)
    leaked = [f for f in files if f.resolve() in held_out] if held_out else []
    if leaked:
        raise KdistillError(f"data.unlabeled.root: {len(leaked):,} of its images are validation or test images of "
                            f"{cfg.name} (e.g. {leaked[0]}); the student would learn from the images it is measured on: "
                            "point data.unlabeled.root at images outside val/ and test/")
    channels, height, width = splits.input_shape
    decode = partial(decode_image, mode="L" if channels == 1 else "RGB", size=(width, height), resize=True)
    labels = torch.cat([splits.train.labels, torch.full((len(files),), UNLABELED, dtype=torch.int64)])
    extra = {"root": str(root), "images": len(files)}
    if is_streamed(splits.train.inputs):
        ours = splits.train.inputs
        inputs: Any = ours.with_changes(files=[*ours.files, *(Unlabeled(f) for f in files)],
                                        decode=WithUnlabeled(ours.decode, decode),
                                        identity=f"{ours.identity}|unlabeled {root}")
        how = "streamed from disk beside the labelled images"
    else:
        scale, shift = _data_normalization(splits)
        decoded_mb = len(files) * channels * height * width * 4 / 2**20
        if decoded_mb + splits.train.inputs.numel() * 4 / 2**20 > cfg.memory_limit_mb:
            raise KdistillError(f"data.unlabeled: {len(files):,} images are {decoded_mb:,.0f} MB decoded, which with the "
                                f"training split is over data.memory_limit_mb={cfg.memory_limit_mb}; raise it, set "
                                "data.unlabeled.limit, or use image files with data.in_memory: false")
        pixels = np.stack([decode(f) for f in files]).transpose(0, 3, 1, 2).astype(np.float32)
        pixels *= scale
        pixels -= shift
        inputs = torch.cat([splits.train.inputs, torch.from_numpy(pixels)])
        how = "held in memory"
    note = f"kdistill: data: {len(files):,} unlabelled images from {root} ({how})"
    return replace(splits, train=Split(inputs, labels), notes=[*splits.notes, note],
                   normalization={**splits.normalization, "unlabeled": extra})


class Unlabeled:
    """A file of `data.unlabeled` in a streamed training split (decoded at the data set's size, always resized)."""

    __slots__ = ("path",)

    def __init__(self, path: Path):
        self.path = path

    def __str__(self) -> str:
        return str(self.path)


class WithUnlabeled:
    """The streamed split's decoder, and for `Unlabeled` files one that resizes to the data set's size (the
    split's own normalisation then applies to both)."""

    def __init__(self, labeled: Any, unlabeled: Any):
        self.labeled, self.unlabeled = labeled, unlabeled

    def __call__(self, item: Any) -> np.ndarray:
        if isinstance(item, Unlabeled):
            return self.unlabeled(item.path)
        return self.labeled(item)
