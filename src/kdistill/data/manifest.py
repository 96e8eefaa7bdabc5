"""Images listed in manifest files: `data: {name: manifest, train: train.csv, val: val.csv, test: test.csv}`.

Each file is CSV with a header row naming the columns `path` and `label`, or JSONL with one
`{"path": ..., "label": ...}` object per line (by extension: `.jsonl`/`.json` is JSONL, anything else
CSV). Paths are relative to the manifest file's folder (or absolute). The classes are train's distinct
labels, sorted (numerically when every label is an integer, else as strings); a label of another split
that train does not have is an error. Every path is checked to exist before anything else happens, and an
error names the manifest file and row. `test` is optional (without it the test split is the validation
split). Decoding, sizes, greyscale/RGB, normalisation and `data.in_memory` are imagefolder's.
"""

from __future__ import annotations

import csv
from pathlib import Path

from kdistill.config import DataConfig
from kdistill.data.imagefolder import image_splits
from kdistill.data.splits import DataSplits
from kdistill.errors import KdistillError
from kdistill.jsonl import jsonl_values

MAX_ROWS = 50_000_000


def read_manifest(manifest: Path) -> list[tuple[int, str, str]]:
    """(row number, path, label) of each entry; row numbers are the file's line numbers (CSV: the header is 1)."""
    if not manifest.is_file():
        raise KdistillError(f"{manifest}: manifest file not found")
    rows: list[tuple[int, str, str]] = []
    try:
        with open(manifest, newline="", encoding="utf-8") as fh:
            if manifest.suffix.lower() in (".jsonl", ".json"):
                for number, item in jsonl_values(fh, f"{manifest}:"):
                    if not isinstance(item, dict) or "path" not in item or "label" not in item:
                        raise KdistillError(f"{manifest}: row {number} needs \"path\" and \"label\" keys")
                    rows.append((number, str(item["path"]), str(item["label"])))
            else:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                    raise KdistillError(f"{manifest}: the CSV header must name the columns path and label "
                                        f"(found {reader.fieldnames})")
                for row in reader:
                    if row.get("path") in (None, "") or row.get("label") in (None, ""):
                        raise KdistillError(f"{manifest}: row {reader.line_num} has an empty path or label")
                    rows.append((reader.line_num, row["path"], row["label"]))
                    if len(rows) > MAX_ROWS:
                        raise KdistillError(f"{manifest}: more than {MAX_ROWS:,} rows")
    except UnicodeDecodeError:
        raise KdistillError(f"{manifest}: not UTF-8 text") from None
    except csv.Error as exc:
        raise KdistillError(f"{manifest}: not valid CSV ({exc})") from None
    if not rows:
        raise KdistillError(f"{manifest}: no rows")
    return rows


def class_order(labels: set[str]) -> list[str]:
    """Class names from distinct label values: sorted numerically when every one is an integer, else as text."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def load(cfg: DataConfig) -> DataSplits:
    if not cfg.train or not cfg.val:
        raise KdistillError("data: a manifest needs data.train and data.val (CSV or JSONL files of path,label rows)")
    if cfg.root or cfg.download:
        raise KdistillError("data.root/download: a manifest lists its own files; set data.train/val/test instead")
    listed = {split: read_manifest(Path(getattr(cfg, split)).expanduser()) for split in ("train", "val", "test")
              if getattr(cfg, split)}
    classes = class_order({label for _, _, label in listed["train"]})
    index = {name: i for i, name in enumerate(classes)}
    parts = {}
    for split, rows in listed.items():
        manifest = Path(getattr(cfg, split)).expanduser()
        files, labels = [], []
        for number, path, label in rows:
            file = Path(path).expanduser()
            file = file if file.is_absolute() else manifest.parent / file
            if not file.is_file():
                raise KdistillError(f"{manifest}: row {number}: image not found: {file}")
            if label not in index:
                raise KdistillError(f"{manifest}: row {number}: label {label!r} is not one of train's classes "
                                    f"({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")
            files.append(file)
            labels.append(index[label])
        parts[split] = (files, labels)
    extra = {"manifests": {split: str(Path(getattr(cfg, split)).expanduser()) for split in listed}}
    if "test" not in parts:
        extra["test_source"] = "val (no test manifest)"
    splits = image_splits(cfg, "manifest", classes, parts, extra)
    splits.notes += _shared_images(parts)
    return splits


def _shared_images(parts: dict[str, tuple[list[Path], list[int]]]) -> list[str]:
    """A warning per evaluation split that lists images train lists too: its accuracy would be measured partly
    on training images."""
    train = {file.resolve() for file in parts["train"][0]}
    notes = []
    for split in ("val", "test"):
        shared = [file for file in parts.get(split, ([], []))[0] if file.resolve() in train]
        if shared:
            notes.append(f"kdistill: warning: {len(shared):,} of the {len(parts[split][0]):,} {split} images are also in "
                         f"the train manifest (e.g. {shared[0]}): {split} accuracy is partly measured on training images")
    return notes
