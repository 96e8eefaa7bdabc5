"""Image classification with kdistill's own engine (zoo, timm and torchvision models; every method)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from kdistill.config import DistillRunConfig, TrainRunConfig
from kdistill.deploy.export import ExportSource
from kdistill.training.rundir import is_run_dir
from kdistill.evaluate.samples import TensorSamples
from kdistill.tasks.base import OpenedRun, Task, role_of_config, run_task_name


class VisionTask(Task):
    """Configs without a `task:` key; run directories whose model.json names a zoo model."""

    name = "vision"

    def claims_config(self, raw: dict[str, Any]) -> bool:
        return raw.get("task") is None

    def claims_run(self, run_dir: Path) -> bool:
        return is_run_dir(run_dir) and run_task_name(run_dir) is None

    def cache_teacher(self, path: str | Path, overrides: list[str], *, rebuild: bool, progress: bool) -> Path:
        from kdistill.runner import run_cache_teacher

        return run_cache_teacher(self.load_config(path, overrides, "distill"), rebuild=rebuild, progress=progress).path

    def config_model(self, command: str) -> type:
        return TrainRunConfig if command == "train" else DistillRunConfig

    def run(self, command: str, cfg: Any, *, overwrite: bool, progress: bool,
            on_epoch_end: Callable[[dict], None] | None = None) -> dict[str, Any]:
        from kdistill.runner import run_distill, run_train

        run = run_train if command == "train" else run_distill
        return run(cfg, overwrite=overwrite, progress=progress, on_epoch_end=on_epoch_end)

    def evaluate(self, run_dir: Path, split: str, data_overrides: dict[str, Any] | None) -> dict[str, Any]:
        from kdistill.runner import evaluate_run

        return evaluate_run(run_dir, split=split, data_overrides=data_overrides)

    def open_run(self, run_dir: Path, split: str, then: str, data_overrides: dict[str, Any] | None,
                 shared: Any = None) -> OpenedRun:
        from kdistill.runner import load_finished_run

        cfg, data, model = load_finished_run(run_dir, data_overrides, then, data=shared)
        part = data.split(split)
        return OpenedRun(cfg, data.name, model, TensorSamples(part.inputs, part.labels), role_of_config(cfg), data)

    def role(self, run_dir: Path) -> str:
        from kdistill.runner import read_run_config

        return role_of_config(read_run_config(run_dir))

    def export_source(self, run_dir: Path, verify_split: str, data_overrides: dict[str, Any] | None) -> ExportSource:
        from kdistill.runner import load_finished_run

        _cfg, data, model = load_finished_run(run_dir, data_overrides, "export it")
        part = data.split(verify_split)
        return ExportSource(model=model, onnx_model=model, val=TensorSamples(part.inputs, part.labels),
                            example=(part.inputs[:2].contiguous(),), input_names=["input"],
                            dynamic_shapes=({0: torch.export.Dim("batch")},), image_inputs=len(data.input_shape) == 3,
                            calibration=data.train.inputs,
                            record={"dataset": data.name, "input_shape": list(data.input_shape), "classes": data.classes})
