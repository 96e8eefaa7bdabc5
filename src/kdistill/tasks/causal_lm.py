"""Causal language models with Hugging Face Transformers (`task: causal-lm`; token-level methods)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdistill.errors import KdistillError
from kdistill.export import ExportSource
from kdistill.lm.config import TASK
from kdistill.tasks.base import OpenedRun, Task, run_task_name


class CausalLMTask(Task):
    """Configs with `task: causal-lm`; run directories whose model.json says so."""

    name = TASK
    default_role = "student"
    score_key = "perplexity"
    higher_is_better = False

    def claims_config(self, raw: dict[str, Any]) -> bool:
        return raw.get("task") == TASK

    def claims_run(self, run_dir: Path) -> bool:
        return run_task_name(run_dir) == TASK

    def load_config(self, path: str | Path, overrides: list[str], command: str) -> Any:
        from kdistill.lm.runner import load_lm_config

        return load_lm_config(path, overrides, distill=command == "distill")

    def run(self, command: str, cfg: Any, *, overwrite: bool, progress: bool) -> dict[str, Any]:
        from kdistill.lm.runner import run_lm_distill, run_lm_train

        return (run_lm_train if command == "train" else run_lm_distill)(cfg, overwrite=overwrite, progress=progress)

    def cache_teacher(self, path: str | Path, overrides: list[str], *, rebuild: bool, progress: bool) -> Path:
        from kdistill.lm.runner import load_lm_config, run_lm_cache_teacher

        cache = run_lm_cache_teacher(load_lm_config(path, overrides, distill=True), rebuild=rebuild, progress=progress)
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
        raise KdistillError(f"{run_dir}: kdistill export does not export causal LMs yet; the run directory is a Hugging "
                            "Face folder (AutoModelForCausalLM.from_pretrained loads it, and optimum or llama.cpp convert it)")

    def table(self, rows: list[dict[str, Any]]) -> str:
        from kdistill.lm.report import lm_table

        return lm_table(rows)
