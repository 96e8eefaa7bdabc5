"""train.log_to (kdistill.training.tracking): TensorBoard, W&B (offline) and MLflow receive every epoch's metrics,
read back from what each wrote, equal to metrics.jsonl; a missing backend is one line and writes nothing;
the run's tracker folders are kdistill's (--overwrite removes them)."""

from __future__ import annotations

import glob
import importlib.util
import json
from pathlib import Path

import pytest

from conftest import write_yaml
from kdistill.config import DistillRunConfig, validate_config
from kdistill.runner import run_distill
from test_cli_errors import assert_user_error, cli


def metrics_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def numeric(line: dict) -> dict[str, float]:
    return {k: v for k, v in line.items() if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed")
def test_tensorboard_holds_every_epoch_metric(distill_config):
    raw = {**distill_config, "train": {**distill_config["train"], "log_to": ["tensorboard"]}}
    run_distill(validate_config(raw, DistillRunConfig), progress=False)
    out = Path(raw["out"])
    scalars = tensorboard_scalars(out / "tensorboard")
    lines = metrics_lines(out)
    assert {"kd", "ce", "val_accuracy", "train_accuracy", "lr", "samples_per_s"} <= set(scalars)
    for line in lines:
        for key, value in numeric(line).items():
            assert (line["epoch"], pytest.approx(value, rel=1e-6)) in scalars[key], key


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("wandb") is None,
                    reason="the mlflow and wandb extras are not installed")
def test_mlflow_and_wandb_offline_receive_the_same_metrics(distill_config, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = {**distill_config, "train": {**distill_config["train"], "log_to": ["mlflow", "wandb"]}}
    run_distill(validate_config(raw, DistillRunConfig), progress=False)
    out = Path(raw["out"])
    ids = json.loads((out / "tracking.json").read_text())
    client = MlflowClient(f"sqlite:///{(out / 'mlruns' / 'mlflow.db').resolve()}")
    lines = metrics_lines(out)
    for key in ("val_accuracy", "kd", "lr"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(ids["mlflow"], key))
        assert history == [(line["epoch"], pytest.approx(line[key], rel=1e-6)) for line in lines], key
    assert client.get_run(ids["mlflow"]).data.params["distill.method"] == "kd"
    # W&B's offline run file (protobuf records) holds each key and the last value as JSON text.
    [record] = glob.glob(str(out / "wandb" / f"offline-run-*-{ids['wandb']}" / f"run-{ids['wandb']}.wandb"))
    data = Path(record).read_bytes()
    assert b"val_accuracy" in data and json.dumps(lines[-1]["val_accuracy"]).encode() in data


def test_a_missing_tracker_is_one_line_and_writes_nothing(distill_config, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    raw = {**distill_config, "train": {**distill_config["train"], "log_to": ["wandb"]}}
    code, _, err = cli(capsys, "distill", write_yaml(tmp_path / "d.yaml", raw))
    assert_user_error(code, err, "train.log_to", "pip install 'kdistill[wandb]'")
    assert not Path(raw["out"]).exists()


def test_an_unknown_tracker_is_refused(distill_config, tmp_path, capsys):
    raw = {**distill_config, "train": {**distill_config["train"], "log_to": ["comet"]}}
    code, _, err = cli(capsys, "distill", write_yaml(tmp_path / "d.yaml", raw))
    assert_user_error(code, err, "train.log_to")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed")
def test_overwrite_removes_the_tracker_folder(distill_config, tmp_path, capsys):
    raw = {**distill_config, "train": {**distill_config["train"], "log_to": ["tensorboard"]}}
    config = write_yaml(tmp_path / "d.yaml", raw)
    assert cli(capsys, "distill", config)[0] == 0
    first = set(p.name for p in (Path(raw["out"]) / "tensorboard").iterdir())
    assert cli(capsys, "distill", config, "--overwrite")[0] == 0
    second = set(p.name for p in (Path(raw["out"]) / "tensorboard").iterdir())
    assert len(second) == 1 and not (first & second)  # the old event file went with the old run


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed")
def test_a_tracker_folder_kdistill_did_not_write_is_refused(distill_config, tmp_path, capsys):
    """A run resumed with log_to next to a tensorboard/ folder of the user's: refused, the folder untouched."""
    raw = {**distill_config, "train": {**distill_config["train"], "epochs": 1}}
    config = write_yaml(tmp_path / "d.yaml", raw)
    assert cli(capsys, "distill", config)[0] == 0
    mine = Path(raw["out"]) / "tensorboard"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    raw["train"]["log_to"] = ["tensorboard"]
    code, _, err = cli(capsys, "distill", write_yaml(tmp_path / "d2.yaml", raw), "--overwrite")
    assert code == 2 and "did not write" in err, err
    assert (mine / "notes.txt").read_text() == "mine"
