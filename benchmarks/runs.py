"""What the benchmark scripts share: train a config, or reuse the run directory of a run that finished
with this exact config (so an interrupted benchmark continues where it stopped), and read its best epoch."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from kdistill.runner import finished_row


def grid_point(text: str) -> tuple[float, float]:
    """A `--grid` argument "T:alpha" as (temperature, alpha)."""
    temperature, alpha = text.split(":")
    return float(temperature), float(alpha)


def best_validation(run_dir: Path) -> tuple[float, int]:
    """(best validation accuracy, its epoch) of a run: the checkpoint its report evaluates."""
    epochs = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    best = max(epochs, key=lambda m: m["val_accuracy"])
    return best["val_accuracy"], best["epoch"]


def run_or_reuse(label: str, fn: Callable[..., dict[str, Any]], cfg: Any) -> dict[str, Any]:
    """The test report row of `cfg`: reused when its run finished with this config, else trained now by `fn`
    (run_train, run_distill, run_text_train, ...); prints one line with the test and best validation accuracy and
    the time taken. The training time is kept beside the run (`<out>.seconds`), so a reused row carries its first
    time as `wall_seconds` (None for a run trained before this file was kept)."""
    seconds_file = Path(f"{cfg.out_dir()}.seconds")
    row = finished_row(cfg)
    reused = row is not None
    if not reused:
        t0 = time.perf_counter()
        row = fn(cfg, overwrite=True, progress=False)
        seconds_file.write_text(f"{time.perf_counter() - t0:.1f}\n")
    row["wall_seconds"] = float(seconds_file.read_text()) if seconds_file.is_file() else None
    best, epoch = best_validation(cfg.out_dir())
    took = "reused" if reused else f"{row['wall_seconds']:.0f} s"
    print(f"{label}: test {100 * row['accuracy']:.2f}% val(best) {100 * best:.2f}% at epoch {epoch} ({took})", flush=True)
    return row
