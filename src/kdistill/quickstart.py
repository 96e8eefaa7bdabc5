"""`kdistill quickstart`: the whole story on digits (ships with scikit-learn) in about a minute.

Trains a teacher, the student alone, and the same student distilled from the teacher with
the same budget, then prints the three-row table and writes report.json / report.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kdistill.config import DistillRunConfig, TrainRunConfig, validate_config
from kdistill.errors import KdistillError
from kdistill.report import format_table, write_report
from kdistill.runner import run_distill, run_train

TEACHER = {"name": "cnn", "channels": [32, 64], "convs_per_stage": 2, "hidden": 128}
STUDENT = {"name": "mlp", "hidden": [16]}
STUDENT_TRAIN = {"epochs": 30, "lr": 3e-3, "weight_decay": 5e-4}
DISTILL = {"method": "kd", "temperature": 4.0, "alpha": 0.1}


def quickstart_configs(out: Path, seed: int = 0) -> dict[str, Any]:
    """The three configs the quickstart runs (also usable as examples)."""
    data = {"name": "digits", "batch_size": 64}
    teacher = {"name": "teacher", "seed": seed, "role": "teacher", "data": data, "model": TEACHER,
               "train": {"epochs": 15, "lr": 2e-3}, "out": str(out / "teacher")}
    student = {"name": "student", "seed": seed, "role": "student", "data": data, "model": STUDENT,
               "train": STUDENT_TRAIN, "out": str(out / "student")}
    distilled = {"name": "distilled", "seed": seed, "data": data, "teacher": str(out / "teacher"),
                 "student": STUDENT, "distill": DISTILL, "train": STUDENT_TRAIN, "out": str(out / "distilled")}
    return {
        "teacher": validate_config(teacher, TrainRunConfig, "quickstart teacher"),
        "student": validate_config(student, TrainRunConfig, "quickstart student"),
        "distilled": validate_config(distilled, DistillRunConfig, "quickstart distilled"),
    }


def run_quickstart(out: str | Path = "runs/quickstart", *, overwrite: bool = False, progress: bool = False) -> list[dict[str, Any]]:
    """Run teacher, student alone and distilled student; returns the report rows."""
    out = Path(out)
    if (out / "report.json").exists() and not overwrite:
        raise KdistillError(f"{out} already holds a quickstart; pass --overwrite to run it again or --out <another dir>")
    if out.exists() and not out.is_dir():
        raise KdistillError(f"--out: {out} exists and is not a directory")
    configs = quickstart_configs(out)
    rows = []
    for key, cfg in configs.items():
        t0 = time.perf_counter()
        run = run_train if isinstance(cfg, TrainRunConfig) else run_distill
        row = run(cfg, overwrite=overwrite, progress=progress)
        print(f"[{key}] {cfg.out_dir()}: test accuracy {100 * row['accuracy']:.2f}% ({time.perf_counter() - t0:.1f} s)", flush=True)
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    write_report(rows, out / "report.json")
    (out / "report.md").write_text(format_table(rows) + "\n")
    return rows
