"""Experiment tracking (`train.log_to`): every epoch's metrics also go to TensorBoard, Weights & Biases or MLflow.

The same numbers `metrics.jsonl` holds (each logged loss term, train/val accuracy, lr, samples/s; the
Trainer's loss, terms and evaluation for text and causal-LM runs), with the epoch as the step. Each backend
is an optional extra, imported only when asked for; a missing one is a one-line error before training.
Everything is written inside the run directory unless the user's environment says otherwise:
`tensorboard/` (event files), `wandb/` (W&B's run folder; `WANDB_MODE=offline` logs without an account),
`mlruns/` (an MLflow SQLite store, `mlruns/mlflow.db`, unless `MLFLOW_TRACKING_URI` is set; experiment
`MLFLOW_EXPERIMENT_NAME`, default "kdistill"). A resumed run continues the same W&B and MLflow runs (their ids are kept in
`tracking.json`), and TensorBoard drops what an interrupted epoch had written past the resume point.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from kdistill.errors import KdistillError, first_line
from kdistill.ownership import TREE, Owned
from kdistill.training.rundir import write_owned_text

TRACKERS = ("tensorboard", "wandb", "mlflow")
FOLDERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlruns"}
RECORD = "tracking.json"


def check_installed(names: list[str]) -> None:
    """One line naming the extra to install, for each backend asked for that is not importable."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise KdistillError(f"train.log_to: {name} is not installed; pip install 'kdistill[{name}]' "
                                "(or remove it from train.log_to)")


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Trackers:
    """The backends of one run, opened once on the main process; `log(record)` after each epoch."""

    def __init__(self, names: list[str], run_dir: Path, run_name: str, config: dict[str, Any], first_step: int = 1):
        check_installed(names)
        self.run_dir, self.names = Path(run_dir), list(names)
        self._closers: list = []
        self._loggers: list = []
        try:
            self._open(names, run_name, config, first_step)
        except KdistillError:
            raise
        except Exception as exc:  # noqa: BLE001 - each backend fails in its own types (network, login, store)
            self.close()
            raise KdistillError(f"train.log_to: a tracker failed to start ({type(exc).__name__}: {first_line(exc, 200)}); "
                                "the run directory is kept: fix it, or drop the tracker, and run again to resume") from None

    def _claim(self, name: str) -> None:
        """Record the backend's folder as kdistill's (a tree third-party code fills) before it is written; a
        folder of that name that kdistill did not make is refused, so --overwrite never removes a user's."""
        folder = FOLDERS[name]
        owned = Owned(self.run_dir)
        if (self.run_dir / folder).exists() and (owned.entries() or {}).get(folder) != TREE:
            raise KdistillError(f"train.log_to: {self.run_dir / folder} exists and kdistill did not write it; move it "
                                "away or choose another out=")
        owned.claim(folder, kind=TREE)

    def _open(self, names: list[str], run_name: str, config: dict[str, Any], first_step: int) -> None:
        ids = self._stored_ids() if first_step > 1 else {}
        for name in names:
            if name != "mlflow" or not os.environ.get("MLFLOW_TRACKING_URI"):
                self._claim(name)
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self.run_dir / FOLDERS["tensorboard"]), purge_step=first_step)
            writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)
            self._loggers.append(lambda numbers, step: [writer.add_scalar(k, v, step) for k, v in numbers.items()]
                                 and writer.flush())
            self._closers.append(writer.close)
        if "wandb" in names:
            wandb = importlib.import_module("wandb")
            ids.setdefault("wandb", uuid.uuid4().hex[:16])
            run = wandb.init(project=os.environ.get("WANDB_PROJECT", "kdistill"), name=run_name, id=ids["wandb"],
                             resume="allow", dir=str(self.run_dir), config=config, reinit="finish_previous")
            self._loggers.append(lambda numbers, step: run.log(numbers, step=step))
            self._closers.append(run.finish)
        if "mlflow" in names:
            mlflow = importlib.import_module("mlflow")
            for noisy in ("mlflow", "alembic"):
                logging.getLogger(noisy).setLevel(logging.WARNING)  # "Updating database tables" on every start
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "kdistill")
            if os.environ.get("MLFLOW_TRACKING_URI"):
                mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
                mlflow.set_experiment(experiment)
            else:  # a SQLite store inside the run directory (MLflow 3 refuses a new file store)
                store = (self.run_dir / FOLDERS["mlflow"]).resolve()
                store.mkdir(exist_ok=True)
                mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
                if mlflow.get_experiment_by_name(experiment) is None:
                    mlflow.create_experiment(experiment, artifact_location=(store / "artifacts").as_uri())
                mlflow.set_experiment(experiment)
            active = mlflow.start_run(run_id=ids.get("mlflow"), run_name=None if ids.get("mlflow") else run_name)
            if "mlflow" not in ids:
                mlflow.log_params({k: str(v)[:500] for k, v in _flat(config).items()})
            ids["mlflow"] = active.info.run_id
            self._loggers.append(lambda numbers, step: mlflow.log_metrics(numbers, step=step))
            self._closers.append(mlflow.end_run)
        if {"wandb", "mlflow"} & set(names):
            write_owned_text(self.run_dir, RECORD, json.dumps(ids, indent=2) + "\n")

    def _stored_ids(self) -> dict[str, str]:
        try:
            stored = json.loads((self.run_dir / RECORD).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return {k: v for k, v in stored.items() if isinstance(v, str)} if isinstance(stored, dict) else {}

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        numbers = _numbers(record)
        if numbers:
            for log in self._loggers:
                log(numbers, int(step if step is not None else record["epoch"]))

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers, self._loggers = [], []


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def open_trackers(names: list[str], run_dir: Path, run_name: str, config: dict[str, Any]) -> Trackers | None:
    """The run's trackers (None when train.log_to is empty), continuing after the epochs metrics.jsonl holds."""
    if not names:
        return None
    metrics = Path(run_dir) / "metrics.jsonl"
    done = sum(1 for line in metrics.read_text().splitlines() if line.strip()) if metrics.is_file() else 0
    return Trackers(names, run_dir, run_name, config, first_step=done + 1)


def trainer_callback(trackers: Trackers, to_record: Any) -> Any:
    """A Hugging Face TrainerCallback that sends each of the Trainer's logs (per epoch) to `trackers`, named
    as metrics.jsonl names them (`to_record` turns a log entry into that record)."""
    from transformers import TrainerCallback

    class _Forward(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "epoch" in logs:
                trackers.log(to_record(logs), step=int(round(logs["epoch"])))

        def on_train_end(self, args, state, control, **kwargs):
            trackers.close()

    return _Forward()
