"""Text-classification data: CSV, JSONL, Hugging Face `datasets` saved to disk, and CLINC150's `data_full.json`.

Every format gives three splits of `{"text": str, "label": int}` rows and one label list. Label
names are mapped to ids in sorted order of the names in the training split (or the order of
`labels:` when given), and the mapping is saved with every model (`config.id2label`), so a
teacher and its students always agree on what id 3 means.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kdistill.data.transfer import UNLABELED, stratified_keep
from kdistill.errors import KdistillError
from kdistill.jsonl import jsonl_values, load_dataset_dict

SPLIT_FILES = {
    "csv": {"train": ["train.csv"], "val": ["validation.csv", "val.csv", "valid.csv", "dev.csv"], "test": ["test.csv"]},
    "jsonl": {"train": ["train.jsonl"], "val": ["validation.jsonl", "val.jsonl", "valid.jsonl", "dev.jsonl"], "test": ["test.jsonl"]},
}


class UnlabeledTexts(BaseModel):
    """`data.unlabeled`: a CSV (with a header) or JSONL file of texts without labels, used as transfer data."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    path: str
    text_column: str = "text"
    limit: int | None = Field(None, gt=0, description="use only the first N texts")


class TextDataConfig(BaseModel):
    """`data` of a text-classification run.

    `format`: csv | jsonl (files `train`, `val`, `test` in `root`; defaults train.csv,
    validation.csv or val.csv, test.csv) | hf-disk (`datasets.save_to_disk` folder with
    train/validation/test) | clinc150 (`root/data_full.json`; `include_oos` adds the
    out-of-scope class, as CLINC150 "plus" does). `labeled_samples`: keep the labels of a fixed
    stratified N training rows; a distill run keeps the others as unlabelled transfer data (the student
    learns them from the teacher only), a train run drops them. `unlabeled: {path: FILE}` adds FILE's texts,
    unlabelled, to a distill run's training rows (kdistill.data.transfer).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    format: Literal["csv", "jsonl", "hf-disk", "clinc150"] = "csv"
    root: str
    train: str | None = None
    val: str | None = None
    test: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None
    include_oos: bool = True
    max_length: int = Field(128, ge=8, le=4096)
    batch_size: int = Field(32, gt=0)
    eval_batch_size: int = Field(128, gt=0)
    limit: int | None = Field(None, gt=0, description="use N evenly spaced rows of each split (quick runs)")
    train_limit: int | None = Field(None, gt=0, description="use N evenly spaced training rows; validation and test stay whole")
    labeled_samples: int | None = Field(None, gt=0)
    unlabeled: UnlabeledTexts | None = None


@dataclass
class TextSplits:
    name: str
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]
    labels: list[str]

    def split(self, name: str) -> list[dict[str, Any]]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def _evenly_spaced(rows: list, n: int) -> list:
    return rows[:: max(1, len(rows) // n)][:n]


def _find(root: Path, given: str | None, candidates: list[str], split: str) -> Path:
    if given:
        path = Path(given) if Path(given).is_absolute() else root / given
        if not path.is_file():
            raise KdistillError(f"data.{split}: {path} not found")
        return path
    for name in candidates:
        if (root / name).is_file():
            return root / name
    raise KdistillError(f"data: no {split} file in {root} (looked for {', '.join(candidates)}); set data.{split}: FILE")


def _rows_csv(path: Path, text_col: str, label_col: str | None, keys: str = "data.") -> list[tuple[str, str]]:
    """(text, label) of each row; without `label_col` (unlabelled texts) the label is ""; `keys` prefixes the
    config keys the errors name."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            for col, key in ((text_col, "text_column"), (label_col, "label_column")):
                if col is not None and col not in columns:
                    raise KdistillError(f"{path}: no column {col!r} (columns: {', '.join(columns) or 'none'}); set {keys}{key}")
            return [(row[text_col] or "", "" if label_col is None else str(row[label_col])) for row in reader]
    except UnicodeDecodeError:
        raise KdistillError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise KdistillError(f"{path}: malformed CSV ({exc})") from None


def _rows_jsonl(path: Path, text_col: str, label_col: str | None, keys: str = "data.") -> list[tuple[str, str]]:
    """As `_rows_csv`, for one JSON object per line."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise KdistillError(f"{path}: not UTF-8 text") from None
    for number, item in jsonl_values(lines, str(path)):
        if label_col is None and (not isinstance(item, dict) or text_col not in item):
            raise KdistillError(f"{path}:{number}: needs the key {text_col!r} (set {keys}text_column)")
        if label_col is not None and (not isinstance(item, dict) or text_col not in item or label_col not in item):
            raise KdistillError(f"{path}:{number}: needs keys {text_col!r} and {label_col!r} (set {keys}text_column / "
                                f"{keys}label_column)")
        rows.append((str(item[text_col]), "" if label_col is None else str(item[label_col])))
    return rows


def _rows_hf_disk(root: Path, cfg: TextDataConfig) -> tuple[dict[str, list[tuple[str, str]]], list[str] | None]:
    loaded = load_dataset_dict(root, "train/validation/test")
    import datasets  # importable: load_dataset_dict checked
    names = {"train": [cfg.train or "train"], "val": [cfg.val] if cfg.val else ["validation", "val", "valid", "dev"],
             "test": [cfg.test or "test"]}
    out: dict[str, list[tuple[str, str]]] = {}
    label_names = None
    for split, candidates in names.items():
        key = next((c for c in candidates if c in loaded), None)
        if key is None:
            raise KdistillError(f"data.root {root}: no {split} split (has {', '.join(loaded)})")
        part = loaded[key]
        for col in (cfg.text_column, cfg.label_column):
            if col not in part.column_names:
                raise KdistillError(f"data.root {root} [{key}]: no column {col!r} (columns: {', '.join(part.column_names)})")
        feature = part.features[cfg.label_column]
        if isinstance(feature, datasets.ClassLabel):
            label_names = list(feature.names)
            out[split] = [(t, feature.int2str(int(y))) for t, y in zip(part[cfg.text_column], part[cfg.label_column])]
        else:
            out[split] = [(str(t), str(y)) for t, y in zip(part[cfg.text_column], part[cfg.label_column])]
    return out, label_names


def _rows_clinc(root: Path, include_oos: bool) -> dict[str, list[tuple[str, str]]]:
    path = root / "data_full.json" if root.is_dir() else root
    if not path.is_file():
        raise KdistillError(f"data.root: {path} not found (CLINC150's data_full.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        out = {}
        for split, key in (("train", "train"), ("val", "val"), ("test", "test")):
            rows = [(str(t), str(y)) for t, y in raw[key]]
            if include_oos:
                rows += [(str(t), "oos") for t, _ in raw.get(f"oos_{key}", [])]
            out[split] = rows
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise KdistillError(f"{path}: not CLINC150's data_full.json layout ({type(exc).__name__}: {exc})") from None
    return out


def _unlabeled_texts(cfg: UnlabeledTexts) -> list[str]:
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise KdistillError(f"data.unlabeled.path: {path} not found")
    read = _rows_jsonl if path.suffix.lower() in (".jsonl", ".json") else _rows_csv
    texts = [text for text, _ in read(path, cfg.text_column, None, keys="data.unlabeled.")]
    texts = texts[: cfg.limit] if cfg.limit else texts
    if not texts:
        raise KdistillError(f"data.unlabeled.path: {path} holds no texts")
    return texts


def with_transfer_rows(splits: TextSplits, cfg: TextDataConfig, unlabeled: bool) -> TextSplits:
    """`labeled_samples` and `unlabeled` applied (kdistill.data.transfer): the rest unlabelled (label -1) and
    the file's texts added when `unlabeled`, else only the labelled rows kept."""
    train = splits.train
    if cfg.labeled_samples is not None:
        keep = stratified_keep(np.array([row["label"] for row in train]), cfg.labeled_samples, len(splits.labels),
                               "labeled_samples", "training rows")
        kept = set(keep.tolist())
        train = [row if i in kept else {**row, "label": UNLABELED} for i, row in enumerate(train)] if unlabeled \
            else [train[i] for i in keep]
    if cfg.unlabeled is not None and unlabeled:
        extra = _unlabeled_texts(cfg.unlabeled)
        held_out = {row["text"] for row in splits.val + splits.test}
        leaked = [text for text in extra if text in held_out]
        if leaked:
            raise KdistillError(f"data.unlabeled.path: {len(leaked):,} of its texts are validation or test texts (e.g. "
                                f"{leaked[0][:60]!r}); the student would learn from the texts it is measured on")
        train = train + [{"text": text, "label": UNLABELED} for text in extra]
    return replace(splits, train=train)


def load_text_splits(cfg: TextDataConfig, unlabeled: bool = True) -> TextSplits:
    """Read the three splits; map labels to ids (sorted names of the training split unless `labels` is given);
    add the transfer rows (`labeled_samples`, `unlabeled`) unless `unlabeled` is False (labels only)."""
    root = Path(cfg.root)
    if not root.exists():
        raise KdistillError(f"data.root: {root} not found")
    fixed_names = None
    if cfg.format in ("csv", "jsonl"):
        read = _rows_csv if cfg.format == "csv" else _rows_jsonl
        given = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
        raw = {split: read(_find(root, given[split], SPLIT_FILES[cfg.format][split], split), cfg.text_column, cfg.label_column)
               for split in ("train", "val", "test")}
    elif cfg.format == "hf-disk":
        raw, fixed_names = _rows_hf_disk(root, cfg)
    else:
        raw = _rows_clinc(root, cfg.include_oos)
    if cfg.limit:  # evenly spaced rows: files are often sorted by label, and a prefix would hold one class
        raw = {k: _evenly_spaced(v, cfg.limit) for k, v in raw.items()}
    for split, rows in raw.items():
        if not rows:
            raise KdistillError(f"data: the {split} split of {root} is empty")
    labels = list(cfg.labels) if cfg.labels else fixed_names or sorted({y for _, y in raw["train"]})
    if cfg.train_limit:  # after the label set is read, so a smaller training set keeps every class id
        raw["train"] = _evenly_spaced(raw["train"], cfg.train_limit)
    if len(labels) < 2:
        raise KdistillError(f"data: {root} has {len(labels)} class ({', '.join(labels) or 'none'}); a classifier needs "
                            "at least 2 (with one, the model would be a regression scoring 100%)")
    index = {name: i for i, name in enumerate(labels)}
    for split, rows in raw.items():
        unknown = sorted({y for _, y in rows if y not in index})
        if unknown:
            raise KdistillError(f"data: the {split} split has label(s) {', '.join(map(repr, unknown[:3]))} that are not in "
                                f"{'data.labels' if cfg.labels else 'the training split'}")
    splits = {split: [{"text": t, "label": index[y]} for t, y in rows] for split, rows in raw.items()}
    loaded = TextSplits(name=root.name, train=splits["train"], val=splits["val"], test=splits["test"], labels=labels)
    return with_transfer_rows(loaded, cfg, unlabeled)
