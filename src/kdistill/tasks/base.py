"""The task seam: what the CLI, evaluate, export and compare ask of a kind of run instead of testing its kind.

A Task owns its configs (which raw configs it claims, how they load), its runs (train, distill, which run
directories are its own, opening a finished one with its model and evaluation samples, its report row)
and its export source. Vision classification and text classification and causal language models
are Tasks.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from kdistill.config import load_config, read_yaml, run_role
from kdistill.errors import KdistillError
from kdistill.deploy.export import ExportSource
from kdistill.evaluate.samples import TensorSamples, TextSamples


@dataclass
class OpenedRun:
    """A finished run, opened: its config, data set name, model (eval mode, CPU), one split as samples in the
    form the model takes, its role, and what the next run of the same data set may reuse (`shared`)."""

    cfg: Any
    dataset: str
    model: nn.Module
    samples: TensorSamples | TextSamples
    role: str
    shared: Any = None


def role_of_config(cfg: Any) -> str:
    """teacher | student for `train` runs (their `role`), distilled for `distill` runs (student for one whose
    method is plain `ce`: kdistill.config.run_role), whatever the task."""
    return run_role(cfg)


class Task(ABC):
    """One kind of run."""

    name: str

    @abstractmethod
    def claims_config(self, raw: dict[str, Any]) -> bool:
        """Is this raw config (after overrides) one of this task's?"""

    @abstractmethod
    def claims_run(self, run_dir: Path) -> bool:
        """Is this run directory one of this task's?"""

    @abstractmethod
    def config_model(self, command: str) -> type:
        """The pydantic model of `command`'s configs (train | distill): `kdistill sweep` validates each trial's with it."""

    @abstractmethod
    def run(self, command: str, cfg: Any, *, overwrite: bool, progress: bool,
            on_epoch_end: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """Train or distill; the test report row ({} on processes other than rank 0). `on_epoch_end` receives each
        epoch's metrics record (with `epoch` and the validation metrics, e.g. `val_accuracy`)."""

    def load_config(self, path: str | Path, overrides: list[str], command: str) -> Any:
        """The validated config of `command` (train | distill): the YAML file with its overrides."""
        return load_config(path, overrides, self.config_model(command))

    @abstractmethod
    def evaluate(self, run_dir: Path, split: str, data_overrides: dict[str, Any] | None) -> dict[str, Any]:
        """Re-evaluate a finished run on a split and write its report; the report row."""

    @abstractmethod
    def open_run(self, run_dir: Path, split: str, then: str, data_overrides: dict[str, Any] | None,
                 shared: Any = None) -> OpenedRun:
        """A finished run's model and one split (for compare); `then` says what the user wanted to do."""

    default_role = "teacher"  # of a train config without a `role`
    score_key = "accuracy"  # the report row's headline number (kdistill.baseline compares runs by it)
    higher_is_better = True
    validation_key = "val_accuracy"  # the epoch record's validation score (kdistill sweep's objective), same direction

    def role(self, run_dir: Path) -> str:
        """teacher | student | distilled, read from the run's config (distill configs have a `student`)."""
        raw = read_yaml(run_dir / "config.yaml")
        return run_role(raw, self.default_role)

    @abstractmethod
    def export_source(self, run_dir: Path, verify_split: str, data_overrides: dict[str, Any] | None) -> ExportSource:
        """A finished run as the exporter takes it (model, verification samples, example inputs, axes)."""

    def cache_teacher(self, path: str | Path, overrides: list[str], *, rebuild: bool, progress: bool) -> Path:
        """`kdistill cache-teacher CONFIG`: build (or check) the teacher cache of a distill config; its folder."""
        raise KdistillError(f"{path}: kdistill cache-teacher does not apply to {self.name} runs")

    def compare(self, runs: list[Path], *, open_run: Any, role_of: Any, **options: Any) -> dict[str, Any]:
        """`kdistill compare` of runs of this task: classifiers by accuracy, calibration, size and speed, each run
        opened by its own task through `open_run` / `role_of` (kdistill.deploy.compare); `options` go to `compare_runs`."""
        from kdistill.deploy.compare import compare_runs

        return compare_runs(runs, open_run=open_run, role_of=role_of, **options)

    def table(self, rows: list[dict[str, Any]]) -> str:
        """The Markdown table the CLI prints for this task's report rows."""
        from kdistill.evaluate.report import format_table

        return format_table(rows)


def run_task_name(run_dir: Path) -> str | None:
    """The `task` recorded in a run directory's model.json (None: a vision run, or no run at all)."""
    try:
        spec = json.loads((Path(run_dir) / "model.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return spec.get("task") if isinstance(spec, dict) else None
