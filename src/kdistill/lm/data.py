"""Causal-LM data: documents from text files, JSONL or a `datasets` folder, tokenised and packed into blocks.

Documents come from `data.root`:
- a text file, or a folder of them (`data.glob`, default `**/*.txt`, in sorted path order): one document
  per file;
- a `.jsonl` file: one document per row, its `text_field`, or `prompt_field` + `completion_field`, in which
  case only the completion's tokens are scored (the prompt is context, not a target);
- a `datasets.save_to_disk` folder (`format: hf-disk`) with a `text_field` column (its own train/validation/
  test splits when it has them).

The split is fixed and made by document, before tokenising: of every `holdout_every` documents in order,
the last goes to test and the one before it to validation (a folder of files is split by file, so no file
is in two splits). Each split's documents are tokenised with the given tokenizer, each followed by its end-
of-sequence token, concatenated, and cut into blocks of `block_size` tokens (the last partial block is
dropped). A block's `labels[t]` is the token at t + 1 when that token is scored, else -100: the model at
position t predicts `labels[t]`, and the block's last position has no label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kdistill.digests import tensors_sha256
from kdistill.jsonl import jsonl_values
from kdistill.errors import KdistillError, first_line

IGNORE = -100
SPLITS = ("train", "val", "test")


class LMDataConfig(BaseModel):
    """`data` of a causal-LM run (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    root: str
    format: Literal["auto", "text", "jsonl", "hf-disk"] = "auto"
    glob: str = "**/*.txt"
    text_field: str = "text"
    prompt_field: str | None = None
    completion_field: str | None = None
    holdout_every: int = Field(20, ge=3, le=10_000, description="of every N documents, one to validation, one to test")
    block_size: int = Field(256, ge=8, le=32_768)
    batch_size: int = Field(8, gt=0, le=2**20, description="blocks per optimiser step (the global batch)")
    eval_batch_size: int = Field(8, gt=0, le=2**20)
    max_train_tokens: int | None = Field(None, gt=0, description="use only the first N training tokens (quick runs)")
    max_eval_tokens: int | None = Field(None, gt=0, description="use only the first N tokens of validation and test")

    @model_validator(mode="after")
    def _pair(self) -> "LMDataConfig":
        if self.prompt_field is not None and self.completion_field is None:
            raise ValueError("prompt_field needs completion_field (the scored part); for plain text use text_field")
        return self

    def kind(self) -> str:
        if self.format != "auto":
            return self.format
        root = Path(self.root)
        if root.is_file():
            return "jsonl" if root.suffix == ".jsonl" else "text"
        if (root / "dataset_dict.json").is_file() or (root / "dataset_info.json").is_file():
            return "hf-disk"
        return "text"


@dataclass
class Document:
    """One document: its text, or a prompt (context, not scored) and a completion (scored)."""

    text: str
    prompt: str = ""


@dataclass
class Blocks:
    """One split, packed: input_ids (N, L) and next-token labels (N, L) int64 (-100: not scored)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    documents: int

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def scored_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    def first(self, n: int) -> "Blocks":
        """The first `n` blocks."""
        return Blocks(self.input_ids[:n], self.labels[:n], self.documents)

    def sha256(self) -> str:
        """Content hash (token ids and labels, in order): the teacher cache's data identity."""
        return tensors_sha256(self.input_ids, self.labels)


@dataclass
class LMSplits:
    name: str
    train: Blocks
    val: Blocks
    test: Blocks

    def split(self, name: str) -> Blocks:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def _read_text_files(cfg: LMDataConfig) -> list[Document]:
    root = Path(cfg.root)
    files = [root] if root.is_file() else sorted(p for p in root.glob(cfg.glob) if p.is_file())
    if not files:
        raise KdistillError(f"data.root: no files matching {cfg.glob!r} in {root}")
    docs = []
    for path in files:
        try:
            docs.append(Document(path.read_text(encoding="utf-8")))
        except UnicodeDecodeError as exc:
            raise KdistillError(f"data: {path} is not UTF-8 text ({first_line(exc, 120)})") from None
    return docs


def _document_of(row: Any, cfg: LMDataConfig, where: str) -> Document:
    if not isinstance(row, dict):
        raise KdistillError(f"{where}: a row must be a JSON object")
    fields = [cfg.prompt_field, cfg.completion_field] if cfg.completion_field else [cfg.text_field]
    for name in (f for f in fields if f):
        if not isinstance(row.get(name), str):
            raise KdistillError(f"{where}: no text field {name!r} (fields: {', '.join(map(str, row))[:200]})")
    if cfg.completion_field:
        return Document(row[cfg.completion_field], row[cfg.prompt_field] if cfg.prompt_field else "")
    return Document(row[cfg.text_field])


def _read_jsonl(cfg: LMDataConfig) -> list[Document]:
    path = Path(cfg.root)
    docs = []
    with path.open(encoding="utf-8") as handle:
        for number, row in jsonl_values(handle, f"data: {path}"):
            docs.append(_document_of(row, cfg, f"data: {path} line {number}"))
    return docs


def _read_hf_disk(cfg: LMDataConfig) -> dict[str, list[Document]] | list[Document]:
    import importlib.util

    if importlib.util.find_spec("datasets") is None:
        raise KdistillError("data: a datasets folder needs the datasets package: pip install 'kdistill[text]'")
    import datasets

    try:
        loaded = datasets.load_from_disk(cfg.root)
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise KdistillError(f"data.root: {cfg.root} is not a datasets folder ({first_line(exc, 160)})") from None

    def docs_of(ds: Any, name: str) -> list[Document]:
        return [_document_of(row, cfg, f"data: {cfg.root} ({name}) row {i}") for i, row in enumerate(ds)]

    if isinstance(loaded, datasets.DatasetDict):
        names = {"train": ["train"], "val": ["validation", "val", "valid", "dev"], "test": ["test"]}
        found = {split: next((n for n in options if n in loaded), None) for split, options in names.items()}
        if found["train"] is None:
            raise KdistillError(f"data.root: {cfg.root} has splits {sorted(loaded)}, none of them train")
        if all(found.values()):
            return {split: docs_of(loaded[name], name) for split, name in found.items()}
        if found["test"] is not None:  # its own test split; validation is carved out of train
            carved = split_documents(docs_of(loaded[found["train"]], found["train"]), cfg.holdout_every)
            return {"train": carved["train"] + carved["test"], "val": carved["val"],
                    "test": docs_of(loaded[found["test"]], found["test"])}
        loaded = loaded[found["train"]]
    return docs_of(loaded, "train")


def split_documents(docs: list[Document], every: int) -> dict[str, list[Document]]:
    """Of every `every` documents in order, the last to test, the one before to validation, the rest to train."""
    out: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for i, doc in enumerate(docs):
        place = i % every
        out["test" if place == every - 1 else "val" if place == every - 2 else "train"].append(doc)
    return out


def read_documents(cfg: LMDataConfig) -> dict[str, list[Document]]:
    """The three splits' documents (module docstring)."""
    if not Path(cfg.root).exists():
        raise KdistillError(f"data.root: {cfg.root} not found")
    kind = cfg.kind()
    if kind == "jsonl" and Path(cfg.root).is_dir():
        raise KdistillError(f"data.root: {cfg.root} is a folder; format jsonl reads one .jsonl file")
    docs = {"text": _read_text_files, "jsonl": _read_jsonl, "hf-disk": _read_hf_disk}[kind](cfg)
    splits = docs if isinstance(docs, dict) else split_documents(docs, cfg.holdout_every)
    for name in SPLITS:
        if not splits[name]:
            raise KdistillError(f"data: {cfg.root} gives no {name} documents ({sum(map(len, splits.values()))} in all; "
                                f"a split by document needs at least {cfg.holdout_every}, see data.holdout_every)")
    return splits


def pack(docs: list[Document], tokenizer: Any, block_size: int, max_tokens: int | None = None) -> Blocks:
    """Tokenise, append end-of-sequence after each document, concatenate, cut into blocks (module docstring)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise KdistillError("the tokenizer has no end-of-sequence token, which separates packed documents")
    ids: list[int] = []
    scored: list[bool] = []
    for start in range(0, len(docs), 256):  # in pieces, so that max_tokens stops the tokenising early
        piece = docs[start : start + 256]
        encoded = tokenizer([d.text for d in piece], add_special_tokens=False)["input_ids"]
        prompts = (tokenizer([d.prompt for d in piece], add_special_tokens=False)["input_ids"]
                   if any(d.prompt for d in piece) else [[] for _ in piece])
        for context, tokens in zip(prompts, encoded):
            ids += context + tokens + [eos]
            scored += [False] * len(context) + [True] * (len(tokens) + 1)
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    if max_tokens is not None:
        ids, scored = ids[:max_tokens], scored[:max_tokens]
    blocks = len(ids) // block_size
    if blocks == 0:
        raise KdistillError(f"data: {len(ids)} tokens make no block of data.block_size={block_size}")
    tokens = torch.tensor(ids[: blocks * block_size], dtype=torch.long).view(blocks, block_size)
    mask = torch.tensor(scored[: blocks * block_size]).view(blocks, block_size)
    labels = torch.full_like(tokens, IGNORE)
    labels[:, :-1] = torch.where(mask[:, 1:], tokens[:, 1:], IGNORE)
    return Blocks(tokens, labels, len(docs))


def load_lm_splits(cfg: LMDataConfig, tokenizer: Any) -> LMSplits:
    """Read, split, tokenise and pack the data; the name is the root's file or folder name."""
    docs = read_documents(cfg)
    blocks = {name: pack(docs[name], tokenizer, cfg.block_size,
                         cfg.max_train_tokens if name == "train" else cfg.max_eval_tokens) for name in SPLITS}
    return LMSplits(Path(cfg.root).name.removesuffix(".jsonl") or "text", **blocks)
