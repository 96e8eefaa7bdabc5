"""The text side of `kdistill export` and `kdistill compare`: a finished text run as a model with
positional inputs for the ONNX exporter, and its split as tokenised samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.errors import KdistillError
from kdistill.deploy.export import ExportSource
from kdistill.evaluate.samples import TextSamples
from kdistill.text.runner import load_finished_text_run
from kdistill.text.data import TextSplits


class LogitsOfInputs(nn.Module):
    """A Hugging Face classifier called with positional tensors, returning its logits: the form
    `torch.onnx.export` takes. Inputs come in `INPUT_ORDER`; a tokenizer without token_type_ids gives two."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


def text_samples(data: TextSplits, split: str, tokenizer: Any, max_length: int) -> TextSamples:
    rows = data.split(split)
    return TextSamples([r["text"] for r in rows], torch.tensor([r["label"] for r in rows]), tokenizer, max_length)


def model_input_names(tokenizer: Any) -> list[str]:
    """The tensors the model is given: the tokenizer's inputs (e.g. no token_type_ids for DistilBERT)."""
    names = [n for n in INPUT_ORDER if n in tokenizer.model_input_names]
    if names[:2] != ["input_ids", "attention_mask"]:
        raise KdistillError(f"export: the tokenizer gives {tokenizer.model_input_names}; a text classifier needs "
                            "input_ids and attention_mask")
    return names


def text_export_source(run_dir: Path, verify_split: str, data_overrides: dict[str, Any] | None = None) -> ExportSource:
    """A finished text run, ready for export: inputs with dynamic batch and sequence axes."""
    cfg, data, model, tokenizer = load_finished_text_run(run_dir, "export it", data_overrides)
    val = text_samples(data, verify_split, tokenizer, cfg.data.max_length)
    names = model_input_names(tokenizer)
    example = val.first(2)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=int(getattr(model.config, "max_position_embeddings", 512)))
    return ExportSource(model=model, onnx_model=LogitsOfInputs(model), val=val,
                        example=tuple(example[n] for n in names), input_names=names,
                        dynamic_shapes=tuple({0: batch, 1: sequence} for _ in names), image_inputs=False,
                        calibration=None, record={"dataset": data.name, "inputs": names, "max_length": cfg.data.max_length,
                                                  "classes": data.labels},
                        symbolic_shapes=False)
