"""What the vision benchmark scripts share: train a config, or reuse the run directory of a run that finished
with this exact config (so an interrupted benchmark continues where it stopped), and read its best epoch."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from kdistill.runner import finished_row


def best_validation(run_dir: Path) -> tuple[float, int]:
    """(best validation accuracy, its epoch) of a run: the checkpoint its report evaluates."""
    epochs = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    best = max(epochs, key=lambda m: m["val_accuracy"])
    return best["val_accuracy"], best["epoch"]


def run_or_reuse(label: str, fn: Callable[..., dict[str, Any]], cfg: Any) -> dict[str, Any]:
    """The test report row of `cfg`: reused when its run finished with this config, else trained now by `fn`
    (run_train or run_distill); prints one line with the test and best validation accuracy and the time taken."""
    t0 = time.perf_counter()
    row = finished_row(cfg)
    reused = row is not None
    if not reused:
        row = fn(cfg, overwrite=True, progress=False)
    best, epoch = best_validation(cfg.out_dir())
    print(f"{label}: test {100 * row['accuracy']:.2f}% val(best) {100 * best:.2f}% at epoch {epoch} "
          f"({'reused' if reused else f'{time.perf_counter() - t0:.0f} s'})", flush=True)
    return row
