"""Images read from disk when a batch needs them, not held in memory (`data.in_memory: false`, or `auto` for
a training split larger than `data.memory_limit_mb` decoded).

`ImageFiles` stands where a split's input tensor would: it has a length and a shape, and indexing it
(`files[3]`, `files[10:20]`, `files[index_tensor]`) decodes those images in this process, normalised
exactly as the in-memory path normalises them. The loops that walk a whole split (an epoch's batches, the
teacher cache build, evaluation) call `batches(chunks)` instead, which decodes in `torch.utils.data`
worker processes (`data.workers`). Augmentation stays where it was, on the decoded batch in the main
process with the run's generator, so a cached teacher's stored crops and flips re-create the very view the
teacher labelled, and a streamed run sees the same batches as an in-memory one.

A bad image met in a worker comes back as one `kdistill: error:` line naming the file (the worker returns
the message; a traceback from another process is never shown).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kdistill.errors import KdistillError

Decoder = Callable[[Path], np.ndarray]  # one file -> (H, W, C) uint8 pixels


class _Decoded(Dataset):
    """Worker side: image i as a normalised (C, H, W) float32 tensor, or the error message for its file."""

    def __init__(self, files: Sequence[Path], decode: Decoder, scale: np.ndarray, shift: np.ndarray):
        self.files, self.decode, self.scale, self.shift = files, decode, scale, shift

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        try:
            pixels = self.decode(self.files[i])
        except KdistillError as exc:
            return str(exc)
        x = pixels.transpose(2, 0, 1).astype(np.float32)
        x *= self.scale
        x -= self.shift
        return torch.from_numpy(x)


def _stack(items: list[torch.Tensor | str]) -> torch.Tensor | str:
    return next((item for item in items if isinstance(item, str)), None) or torch.stack(items)  # type: ignore[arg-type]


class ImageFiles:
    """A split's images on disk, decoded on demand; `shape` is (N, C, H, W) as the tensor would be."""

    def __init__(self, files: Sequence[Path], decode: Decoder, image_shape: tuple[int, int, int],
                 scale: np.ndarray, shift: np.ndarray, workers: int, identity: str = ""):
        self.files = list(files)
        self.decode = decode
        self.image_shape = tuple(image_shape)
        self.scale, self.shift = scale, shift
        self.workers = workers
        self.identity = identity  # how the images are decoded (mode, size): part of the content hash

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), *self.image_shape))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def _dataset(self) -> _Decoded:
        return _Decoded(self.files, self.decode, self.scale, self.shift)

    def __getitem__(self, key: int | slice | torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Decode the images `key` names, here (small reads: probes, latency samples)."""
        dataset = self._dataset()
        if isinstance(key, int):
            return self._checked(_stack([dataset[key]]))[0]
        rows = range(len(self))[key] if isinstance(key, slice) else [int(i) for i in key]
        if not rows:
            return torch.empty((0, *self.image_shape))
        return self._checked(_stack([dataset[i] for i in rows]))

    def subset(self, index: torch.Tensor | Sequence[int] | slice) -> "ImageFiles":
        """These images, still on disk."""
        rows = range(len(self))[index] if isinstance(index, slice) else index
        return self.with_changes(files=[self.files[int(i)] for i in rows])

    def with_changes(self, **changes: object) -> "ImageFiles":
        """A copy with some settings replaced (other files, another normalisation)."""
        settings = {"files": self.files, "decode": self.decode, "image_shape": self.image_shape, "scale": self.scale,
                    "shift": self.shift, "workers": self.workers, "identity": self.identity}
        return ImageFiles(**{**settings, **changes})

    def batches(self, chunks: Sequence[torch.Tensor | Sequence[int]], collate: Callable = None) -> Iterator:
        """Each index chunk's images, in order, decoded by `workers` processes (0: in this one) and collated by
        `collate` there (default: stacked into one tensor)."""
        loader = DataLoader(self._dataset(), batch_sampler=[list(map(int, c)) for c in chunks], num_workers=self.workers,
                            collate_fn=collate or _stack, prefetch_factor=4 if self.workers else None)
        for batch in loader:
            yield self._checked(batch)

    @staticmethod
    def _checked(batch: object) -> object:
        if isinstance(batch, str):
            raise KdistillError(batch)
        return batch

    def sha256(self) -> str:
        """Identity of the files (paths, sizes, modification times) and of how they are decoded, without reading
        them: the teacher cache's data hash for a streamed split."""
        digest = hashlib.sha256(f"{self.identity}|{self.image_shape}|{self.scale.tolist()}|{self.shift.tolist()}".encode())
        for item in self.files:
            item = getattr(item, "path", item)  # data.unlabeled's files (kdistill.data.transfer.Unlabeled)
            if isinstance(item, Path):
                stat = os.stat(item)
                digest.update(f"{item}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
            else:  # a row of a data set whose own fingerprint is in `identity`
                digest.update(f"{item}\n".encode())
        return digest.hexdigest()


def is_streamed(inputs: object) -> bool:
    return isinstance(inputs, ImageFiles)


def take(inputs: torch.Tensor | ImageFiles, index: torch.Tensor) -> torch.Tensor | ImageFiles:
    """The rows `index` of a split's inputs: a tensor, or (streamed) the same files, still on disk."""
    return inputs.subset(index) if isinstance(inputs, ImageFiles) else inputs[index]


def in_chunks(inputs: torch.Tensor | ImageFiles, size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, inputs[start:start + size]) over a whole split, in order; streamed splits decode in workers."""
    n = len(inputs)
    if isinstance(inputs, ImageFiles):
        starts = range(0, n, size)
        yield from zip(starts, inputs.batches([torch.arange(s, min(n, s + size)) for s in starts]))
        return
    for start in range(0, n, size):
        yield start, inputs[start : start + size]


def _channel_sums(items: list[torch.Tensor | str]) -> tuple[int, np.ndarray, np.ndarray] | str:
    """Worker side of `stream_statistics`: (pixels per channel, sums, sums of squares) of a batch, in float64."""
    error = next((item for item in items if isinstance(item, str)), None)
    if error is not None:
        return error
    pixels = np.stack([item.numpy() for item in items]).astype(np.float64)  # (N, C, H, W), integers 0..255
    return pixels[:, 0].size, pixels.sum(axis=(0, 2, 3)), np.square(pixels).sum(axis=(0, 2, 3))


def stream_statistics(files: ImageFiles, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of the raw pixels / 255 of every image, as the in-memory path
    computes them over the decoded array (sums of uint8 values are exact in float64). The sums are taken in
    the DataLoader workers, which send back three numbers per channel and batch, not the images: summing
    received batches here made the main process's heap grow by up to 2 GB over 100,000 images (glibc keeps
    the freed float64 temporaries)."""
    channels = files.image_shape[0]
    unit = np.ones((channels, 1, 1), np.float32)
    raw = files.with_changes(scale=unit, shift=0 * unit)
    n = len(raw)
    chunks = [range(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]
    count, total, squares = 0, np.zeros(channels), np.zeros(channels)
    for pixels, sums, sums_of_squares in raw.batches(chunks, collate=_channel_sums):
        count, total, squares = count + pixels, total + sums, squares + sums_of_squares
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return mean / 255.0, std / 255.0
