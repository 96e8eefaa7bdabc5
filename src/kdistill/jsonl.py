"""JSON Lines and saved Hugging Face data sets, read with one-line errors (text, causal-LM and image data alike)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from kdistill.errors import KdistillError, first_line


def jsonl_values(lines: Iterable[str], where: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line; a line that is not JSON is an error naming `where` and the line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise KdistillError(f"{where} line {number}: not JSON ({exc.msg})") from None


def load_dataset_dict(root: Path, needs: str) -> Any:
    """The DatasetDict a `save_to_disk` folder holds; `needs` says which splits, for the error about a lone Dataset."""
    try:
        import datasets
    except ImportError:
        raise KdistillError("an hf-disk data set needs the `datasets` package: pip install 'kdistill[text]'") from None
    try:
        loaded = datasets.load_from_disk(str(root))
    except (FileNotFoundError, ValueError) as exc:
        raise KdistillError(f"data.root {root}: not a saved Hugging Face dataset ({first_line(exc)})") from None
    except (IndexError, KeyError, TypeError) as exc:  # datasets' own reading of a split saved with no rows, or damaged
        raise KdistillError(f"data.root {root}: a split of this saved dataset cannot be read; an empty split is saved "
                            f"without data files ({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise KdistillError(f"data.root {root}: a single Dataset; save a DatasetDict with {needs} splits")
    return loaded
