"""Text classification with Hugging Face Transformers (`task: text-classification`; logit methods)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from kdistill.deploy.export import ExportSource
from kdistill.text.config import TextDistillRunConfig, TextTrainRunConfig
from kdistill.tasks.base import OpenedRun, Task, role_of_config, run_task_name
from kdistill.text.runner import TASK


class TextClassificationTask(Task):
    """Configs with `task: text-classification`; run directories whose model.json says so."""

    name = TASK

    def claims_config(self, raw: dict[str, Any]) -> bool:
        return raw.get("task") == TASK

    def claims_run(self, run_dir: Path) -> bool:
        return run_task_name(run_dir) == TASK

    def config_model(self, command: str) -> type:
        return TextTrainRunConfig if command == "train" else TextDistillRunConfig

    def run(self, command: str, cfg: Any, *, overwrite: bool, progress: bool,
            on_epoch_end: Callable[[dict], None] | None = None) -> dict[str, Any]:
        from kdistill.text.runner import run_text_distill, run_text_train

        run = run_text_train if command == "train" else run_text_distill
        return run(cfg, overwrite=overwrite, progress=progress, on_epoch_end=on_epoch_end)

    def evaluate(self, run_dir: Path, split: str, data_overrides: dict[str, Any] | None) -> dict[str, Any]:
        from kdistill.text.runner import evaluate_text_run

        return evaluate_text_run(run_dir, split=split, data_overrides=data_overrides)

    def open_run(self, run_dir: Path, split: str, then: str, data_overrides: dict[str, Any] | None,
                 shared: Any = None) -> OpenedRun:
        from kdistill.text.deploy import text_samples
        from kdistill.text.runner import load_finished_text_run

        cfg, data, model, tokenizer = load_finished_text_run(run_dir, then, data_overrides)
        return OpenedRun(cfg, data.name, model, text_samples(data, split, tokenizer, cfg.data.max_length),
                         role_of_config(cfg), shared)

    def export_source(self, run_dir: Path, verify_split: str, data_overrides: dict[str, Any] | None) -> ExportSource:
        from kdistill.text.deploy import text_export_source

        return text_export_source(run_dir, verify_split, data_overrides)
