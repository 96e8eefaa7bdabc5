"""The causal-LM side of `kdistill export`: a finished run as a model of positional inputs for the ONNX exporter,
verified on a few of its split's blocks.

The ONNX graph maps `input_ids` and `attention_mask` (dynamic batch and sequence axes) to next-token logits
(batch, sequence, vocabulary) for every position, with no KV cache: it scores and ranks text, and generates by
re-running the whole prefix for each new token. For cached generation, `--format torch --quantize int8` gives
the PyTorch dynamic-int8 model (its Linear layers int8), which Transformers' `generate` drives with its cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.deploy.export import ExportSource
from kdistill.errors import KdistillError
from kdistill.evaluate.samples import BlockSamples
from kdistill.lm.runner import load_finished_lm_run

VERIFY_BLOCKS = 8  # blocks of the split each variant is checked on (their logits are blocks × L × vocabulary floats)
INPUT_NAMES = ["input_ids", "attention_mask"]


class NextTokenLogits(nn.Module):
    """A Hugging Face causal LM called with positional `input_ids` and `attention_mask`, returning the logits of
    every position and no cache: the form `torch.onnx.export` takes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def lm_export_source(run_dir: Path, verify_split: str, data_overrides: dict[str, Any] | None = None) -> ExportSource:
    """A finished causal-LM run, ready for export: verified on the first VERIFY_BLOCKS blocks of `verify_split`,
    where accuracy is top-1 next-token accuracy on the scored positions."""
    cfg, data, model, _ = load_finished_lm_run(run_dir, "export it", data_overrides)
    blocks = data.split(verify_split).first(VERIFY_BLOCKS)
    if len(blocks) == 0:
        raise KdistillError(f"{run_dir}: the {verify_split} split has no blocks to verify the export on")
    val = BlockSamples(blocks.input_ids, blocks.labels)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=int(getattr(model.config, "max_position_embeddings", 2048)))
    two = torch.arange(2) % len(val)  # the exporter needs a batch of 2 (a size-1 axis would not stay dynamic)
    example = {name: tensor[two] for name, tensor in val.first(2).items()}
    return ExportSource(model=model, onnx_model=NextTokenLogits(model), val=val,
                        example=tuple(example[n] for n in INPUT_NAMES), input_names=list(INPUT_NAMES),
                        dynamic_shapes=tuple({0: batch, 1: sequence} for _ in INPUT_NAMES), image_inputs=False,
                        calibration=None, symbolic_shapes=False, accuracy_name="next-token accuracy",
                        record={"dataset": data.name, "inputs": list(INPUT_NAMES), "outputs": "next-token logits of "
                                "every position (batch, sequence, vocabulary), no KV cache",
                                "block_size": cfg.data.block_size, "verify_blocks": len(val),
                                "accuracy": "top-1 next-token accuracy on the scored positions"})
