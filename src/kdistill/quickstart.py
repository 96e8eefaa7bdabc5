"""`kdistill quickstart`: the whole story on digits (ships with scikit-learn) in well under a minute.

Trains a teacher, then the same small student alone and distilled from the teacher with the
same budget, each over three seeds, prints the three-row table (students as mean ± std) and
writes report.json / report.md. The settings were picked on the validation split (see
docs/design.md, "Quickstart").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kdistill.config import DistillRunConfig, TrainRunConfig, validate_config
from kdistill.errors import KdistillError
from kdistill.evaluate.report import aggregate_seeds, format_table, write_report
from kdistill.ownership import FOLDER, MANIFEST, Owned
from kdistill.training.rundir import is_run_dir, write_owned_text
from kdistill.runner import finished_row, run_distill, run_train

SEEDS = (0, 1, 2)
DATA = {"name": "digits", "batch_size": 64}
TEACHER = {"name": "cnn", "channels": [32, 64], "convs_per_stage": 2, "hidden": 128}
TEACHER_TRAIN = {"epochs": 15, "lr": 2e-3}
STUDENT = {"name": "mlp", "hidden": [64]}
STUDENT_TRAIN = {"epochs": 60, "lr": 3e-3, "weight_decay": 0.0}
DISTILL = {"method": "kd", "temperature": 4.0, "alpha": 0.5}


def quickstart_configs(out: Path, seeds: tuple[int, ...] = SEEDS) -> dict[str, list[TrainRunConfig | DistillRunConfig]]:
    """The configs the quickstart runs: one teacher, and per seed a student alone and a distilled one."""
    teacher = {"name": "teacher", "seed": 0, "role": "teacher", "data": DATA, "model": TEACHER,
               "train": TEACHER_TRAIN, "out": str(out / "teacher")}
    configs: dict[str, list] = {"teacher": [validate_config(teacher, TrainRunConfig, "quickstart teacher")],
                                "student": [], "distilled": []}
    for seed in seeds:
        alone = {"name": "student", "seed": seed, "role": "student", "data": DATA, "model": STUDENT,
                 "train": STUDENT_TRAIN, "out": str(out / f"student-seed{seed}")}
        distilled = {"name": "distilled", "seed": seed, "data": DATA, "teacher": str(out / "teacher"),
                     "student": STUDENT, "distill": DISTILL, "train": STUDENT_TRAIN, "out": str(out / f"distilled-seed{seed}")}
        configs["student"].append(validate_config(alone, TrainRunConfig, "quickstart student"))
        configs["distilled"].append(validate_config(distilled, DistillRunConfig, "quickstart distilled"))
    return configs


def run_quickstart(out: str | Path = "runs/quickstart", *, overwrite: bool = False, progress: bool = False,
                   seeds: tuple[int, ...] = SEEDS) -> list[dict[str, Any]]:
    """Run teacher, student alone and distilled student; returns the three report rows."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise KdistillError(f"--out: {out} exists and is not a directory")
    if is_run_dir(out):
        raise KdistillError(f"--out: {out} is a train/distill run directory; give the quickstart its own --out")
    configs_by_role = quickstart_configs(out, seeds)
    owned = Owned(out)
    if out.is_dir() and any(out.iterdir()):
        if not owned.is_owned():
            raise KdistillError(f"--out: {out} is not empty and holds no quickstart written by kdistill (no {MANIFEST}; "
                                "one of an older kdistill: delete it yourself); choose another --out")
        owned.check_removable("--out")  # before anything is removed: every sub-run must be kdistill's too
        if (out / "report.json").exists() and not overwrite:
            raise KdistillError(f"{out} already holds a quickstart; pass --overwrite to run it again or --out <another dir>")
    owned.claim("report.json", "report.md")
    owned.claim(*[Path(cfg.out).name for configs in configs_by_role.values() for cfg in configs], kind=FOLDER)
    if overwrite:
        for name in ("report.json", "report.md"):  # the old table no longer describes the runs
            (out / name).unlink(missing_ok=True)
    rows = []
    for key, configs in configs_by_role.items():
        t0 = time.perf_counter()
        seed_rows = []
        for cfg in configs:
            done = None if overwrite else finished_row(cfg)
            if done is not None:  # finished before an interruption: reuse
                seed_rows.append(done)
                continue
            run = run_train if isinstance(cfg, TrainRunConfig) else run_distill
            seed_rows.append(run(cfg, overwrite=overwrite, progress=progress))
        row = aggregate_seeds(seed_rows) if len(seed_rows) > 1 else seed_rows[0]
        accs = ", ".join(f"{100 * r['accuracy']:.2f}%" for r in seed_rows)
        print(f"[{key}] {len(seed_rows)} run(s) in {out}: test accuracy {accs} ({time.perf_counter() - t0:.1f} s)", flush=True)
        rows.append(row)
    write_report(rows, out / "report.json")
    write_owned_text(out, "report.md", format_table(rows) + "\n")
    return rows
