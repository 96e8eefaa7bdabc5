"""Causal language models with Hugging Face Transformers (`task: causal-lm`; token-level methods)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from kdistill.errors import KdistillError
from kdistill.deploy.export import ExportSource
from kdistill.lm.config import TASK, LMDistillRunConfig, LMTrainRunConfig
from kdistill.tasks.base import OpenedRun, Task, run_task_name


class CausalLMTask(Task):
    """Configs with `task: causal-lm`; run directories whose model.json says so."""

    name = TASK
    default_role = "student"
    score_key = "perplexity"
    higher_is_better = False
    validation_key = "val_perplexity"

    def claims_config(self, raw: dict[str, Any]) -> bool:
        return raw.get("task") == TASK

    def claims_run(self, run_dir: Path) -> bool:
        return run_task_name(run_dir) == TASK

    def config_model(self, command: str) -> type:
        return LMTrainRunConfig if command == "train" else LMDistillRunConfig

    def run(self, command: str, cfg: Any, *, overwrite: bool, progress: bool,
            on_epoch_end: Callable[[dict], None] | None = None) -> dict[str, Any]:
        from kdistill.lm.runner import run_lm_distill, run_lm_train

        run = run_lm_train if command == "train" else run_lm_distill
        return run(cfg, overwrite=overwrite, progress=progress, on_epoch_end=on_epoch_end)

    def cache_teacher(self, path: str | Path, overrides: list[str], *, rebuild: bool, progress: bool) -> Path:
        from kdistill.lm.runner import run_lm_cache_teacher

        cache = run_lm_cache_teacher(self.load_config(path, overrides, "distill"), rebuild=rebuild, progress=progress)
        return cache.path

    def evaluate(self, run_dir: Path, split: str, data_overrides: dict[str, Any] | None) -> dict[str, Any]:
        from kdistill.lm.runner import evaluate_lm_run

        return evaluate_lm_run(run_dir, split=split, data_overrides=data_overrides)

    def open_run(self, run_dir: Path, split: str, then: str, data_overrides: dict[str, Any] | None,
                 shared: Any = None) -> OpenedRun:
        raise KdistillError(f"{run_dir} is a causal-LM run; compare it only with other causal-LM runs")

    def compare(self, runs: list[Path], *, open_run: Any = None, role_of: Any = None, **options: Any) -> dict[str, Any]:
        """Causal-LM runs among themselves, by perplexity and agreement with the teacher (kdistill.lm.compare)."""
        from kdistill.lm.compare import compare_lm_runs

        return compare_lm_runs(runs, **options)

    def export_source(self, run_dir: Path, verify_split: str, data_overrides: dict[str, Any] | None) -> ExportSource:
        from kdistill.lm.deploy import lm_export_source

        return lm_export_source(run_dir, verify_split, data_overrides)

    def table(self, rows: list[dict[str, Any]]) -> str:
        from kdistill.lm.report import lm_table

        return lm_table(rows)
