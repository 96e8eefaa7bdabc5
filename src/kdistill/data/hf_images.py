"""Images in a Hugging Face `datasets` folder (`save_to_disk`): `data: {name: hf-disk, root, image_column,
label_column}`.

The folder holds a DatasetDict with a `train` split, a validation split (`validation`, `val`, `valid` or
`dev`) and optionally `test` (without it the test split is the validation split). `image_column` (default
`image`) is an `Image` feature (or anything Pillow-decodable it yields); `label_column` (default `label`)
a `ClassLabel` (its names are the classes, in its order) or plain values (train's distinct values,
sorted; numerically when all are integers). The arrow files are memory-mapped, so streaming
(`data.in_memory`) decodes rows in DataLoader workers like image files; a row that is not an image is one
line naming the split and row. Decoding, sizes, normalisation: imagefolder's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdistill.config import DataConfig
from kdistill.data.imagefolder import image_splits
from kdistill.data.manifest import class_order
from kdistill.data.splits import DataSplits
from kdistill.errors import KdistillError, first_line
from kdistill.jsonl import load_dataset_dict

VAL_NAMES = ("validation", "val", "valid", "dev")


class Rows:
    """Opens row (split, i) of the dataset as a PIL image; picklable enough for forked DataLoader workers."""

    def __init__(self, root: Path, splits: dict[str, Any], column: str):
        self.root, self.splits, self.column = root, splits, column

    def __call__(self, item: tuple[str, int]):
        from PIL import Image

        split, index = item
        try:
            value = self.splits[split][index][self.column]
            if isinstance(value, dict) and value.get("bytes") is not None:  # an undecoded Image feature
                import io

                value = Image.open(io.BytesIO(value["bytes"]))
            if not isinstance(value, Image.Image):
                raise TypeError(f"a {type(value).__name__}, not an image")
            value.load()
            return value
        except KdistillError:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow and datasets raise many types for a damaged row
            raise KdistillError(f"{self.root} {split} row {index}: column {self.column!r} is not a readable image "
                                f"({first_line(exc, 120)})") from None


def _class_names(train: Any, column: str) -> tuple[list[str], bool]:
    """The class names and whether the labels are ClassLabel ids (else raw values)."""
    feature = train.features.get(column)
    names = getattr(feature, "names", None)
    if names:
        return [str(n) for n in names], True
    return class_order({str(v) for v in train[column]}), False


def load(cfg: DataConfig) -> DataSplits:
    if not cfg.root:
        raise KdistillError("data.root: hf-disk needs data.root, a folder written by DatasetDict.save_to_disk")
    root = Path(cfg.root).expanduser()
    loaded = load_dataset_dict(root, "train and validation")
    val = next((name for name in VAL_NAMES if name in loaded), None)
    if "train" not in loaded or val is None:
        raise KdistillError(f"data.root {root}: needs a train and a validation split (has {', '.join(loaded)})")
    chosen = {"train": "train", "val": val, **({"test": "test"} if "test" in loaded else {})}
    for split in chosen.values():
        missing = [c for c in (cfg.image_column, cfg.label_column) if c not in loaded[split].column_names]
        if missing:
            raise KdistillError(f"data.root {root}: split {split} has no column {missing[0]!r} (columns: "
                                f"{', '.join(loaded[split].column_names)}; set data.image_column / data.label_column)")
    classes, ids = _class_names(loaded["train"], cfg.label_column)
    for split in chosen.values():
        names = getattr(loaded[split].features.get(cfg.label_column), "names", None)
        if ids and names is not None and [str(n) for n in names] != classes:
            raise KdistillError(f"data.root {root}: split {split}'s {cfg.label_column!r} names its classes "
                                f"{names[:5]}..., train's are {classes[:5]}...; give every split the same ClassLabel")
    index = {name: i for i, name in enumerate(classes)}
    parts = {}
    for ours, theirs in chosen.items():
        labels = []
        for row, value in enumerate(loaded[theirs][cfg.label_column]):
            key = classes[value] if ids and 0 <= int(value) < len(classes) else str(value)
            if key not in index:
                raise KdistillError(f"{root} {theirs} row {row}: label {value!r} is not one of train's classes "
                                    f"({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")
            labels.append(index[key])
        parts[ours] = ([(theirs, i) for i in range(len(labels))], labels)
    rows = Rows(root, {name: loaded[name] for name in chosen.values()}, cfg.image_column)
    extra = {"root": str(root), "fingerprints": {name: loaded[name]._fingerprint for name in chosen.values()},
             **({} if "test" in chosen else {"test_source": "val (no test split)"})}
    return image_splits(cfg, "hf-disk", classes, parts, extra, opener=rows, peek=rows)
