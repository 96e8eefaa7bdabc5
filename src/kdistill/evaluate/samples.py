"""Labelled evaluation samples in the form a model takes: image tensors, tokenised text, or a causal LM's blocks.

`export` and `compare` run every form of a model (PyTorch, ONNX fp32, int8) on the same samples;
these classes give them batches, a batch-1 example for latency and a larger batch for throughput,
whatever the modality. A batch is a tensor (images) or a dict of tensors (a tokenizer's output).
"""

from __future__ import annotations

import statistics
from typing import Any, Iterator, Mapping, Union

import torch

Batch = Union[torch.Tensor, Mapping[str, torch.Tensor]]


class TensorSamples:
    """Samples held as one input tensor (N, ...) with labels (N,)."""

    throughput_batch = 256

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor):
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, size: int = 512) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), size):
            yield self.inputs[start : start + size].contiguous()

    def first(self, n: int) -> torch.Tensor:
        return self.inputs[:n].contiguous()

    def example(self) -> torch.Tensor:
        """The batch-1 input latency is timed on."""
        return self.first(1)


class TextSamples:
    """Texts tokenised once (truncated to `max_length`), padded per batch, with labels."""

    throughput_batch = 64

    def __init__(self, texts: list[str], labels: torch.Tensor, tokenizer: Any, max_length: int):
        self.tokenizer = tokenizer
        self.labels = labels
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        self.encodings = [{k: encoded[k][i] for k in encoded} for i in range(len(texts))]

    def __len__(self) -> int:
        return len(self.encodings)

    def _pad(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer.pad(rows, return_tensors="pt"))

    def batches(self, size: int = 64) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, len(self), size):
            yield self._pad(self.encodings[start : start + size])

    def first(self, n: int) -> dict[str, torch.Tensor]:
        return self._pad(self.encodings[:n])

    def example(self) -> dict[str, torch.Tensor]:
        """A sentence of median token length, alone: the batch-1 request latency is timed on."""
        lengths = [len(e["input_ids"]) for e in self.encodings]
        median = statistics.median_low(lengths)
        return self._pad([self.encodings[lengths.index(median)]])


class BlockSamples:
    """A causal LM's packed blocks (input_ids (N, L)) with their next-token labels (N, L; -100 where a position is
    not scored), so that `accuracy` of the (N, L, vocabulary) logits is top-1 next-token accuracy."""

    def __init__(self, input_ids: torch.Tensor, labels: torch.Tensor):
        self.input_ids, self.labels = input_ids, labels

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batches(self, size: int = 4) -> Iterator[dict[str, torch.Tensor]]:
        """Few blocks at a time: each block's logits are L × vocabulary floats."""
        for start in range(0, len(self), size):
            yield self._rows(start, start + size)

    def first(self, n: int) -> dict[str, torch.Tensor]:
        return self._rows(0, n)

    def _rows(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        ids = self.input_ids[start:stop].contiguous()
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
