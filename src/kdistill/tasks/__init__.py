"""The tasks kdistill runs, and the one place that picks the task of a config or a run directory.

`kdistill train/distill/evaluate/export/compare` ask these functions; nothing else tests what kind of
run it holds. `export` and `compare` here are the Python API of those commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdistill.config import apply_overrides, read_yaml
from kdistill.errors import KdistillError
from kdistill.tasks.base import OpenedRun, Task, role_of_config
from kdistill.tasks.causal_lm import CausalLMTask
from kdistill.tasks.text import TextClassificationTask
from kdistill.tasks.vision import VisionTask

# Asked in this order; vision (configs without a `task:` key) is the default.
TASKS: tuple[Task, ...] = (TextClassificationTask(), CausalLMTask(), VisionTask())


def for_config(path: str | Path, overrides: list[str]) -> Task:
    """The task of a config file (after its overrides)."""
    raw = apply_overrides(read_yaml(path), overrides)
    for task in TASKS:
        if task.claims_config(raw):
            return task
    known = ", ".join(t.name for t in TASKS if t.name != "vision")
    raise KdistillError(f"{path}: task: {raw.get('task')!r} is not a task kdistill runs (known: {known}; "
                        "image classification configs have no task key)")


def for_run(run_dir: str | Path) -> Task:
    """The task of a run directory (a vision run unless its model.json says otherwise)."""
    run_dir = Path(run_dir)
    return next((task for task in TASKS if task.claims_run(run_dir)), TASKS[-1])


def load(path: str | Path, overrides: list[str], command: str) -> tuple[Task, Any]:
    """The task of a config and the config itself, validated for `command` (train | distill)."""
    task = for_config(path, overrides)
    return task, task.load_config(path, overrides, command)


def open_run(run_dir: Path, split: str, then: str, data_overrides: dict[str, Any] | None, shared: Any = None) -> OpenedRun:
    return for_run(run_dir).open_run(run_dir, split, then, data_overrides, shared)


def role_of(run_dir: Path) -> str:
    return for_run(run_dir).role(run_dir)


def export(run_dir: str | Path, *, verify_split: str = "val", data_overrides: dict[str, Any] | None = None,
           **options: Any) -> dict[str, Any]:
    """`kdistill export RUN_DIR`: the run's task gives the export source; `options` go to `export_run`."""
    from kdistill.deploy.export import check_export_request, export_run

    run_dir = Path(run_dir)
    check_export_request(options.get("fmt", "onnx"), options.get("quantize"), options.get("opset", 18))
    source = for_run(run_dir).export_source(run_dir, verify_split, data_overrides)
    return export_run(run_dir, source, verify_split=verify_split, **options)


def compare(paths: list[str | Path], **options: Any) -> dict[str, Any]:
    """`kdistill compare RUN_DIR ...`: the runs' task compares them (classifier runs of vision and text together,
    each opened by its own task; causal-LM runs among themselves); `options` go to that comparison."""
    from kdistill.deploy.compare import expand_runs

    runs = expand_runs(paths)
    kinds = {for_run(run).name for run in runs}
    if len(kinds) > 1 and "causal-lm" in kinds:
        raise KdistillError("compare causal-LM runs only with other causal-LM runs (perplexity is not accuracy)")
    return for_run(runs[0]).compare(runs, open_run=open_run, role_of=role_of, **options)


__all__ = ["TASKS", "Task", "OpenedRun", "for_config", "for_run", "load", "open_run", "role_of", "role_of_config",
           "export", "compare"]
