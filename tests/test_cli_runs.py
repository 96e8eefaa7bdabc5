"""The commands working end to end on digits: train, distill, evaluate, quickstart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli, tree_digest, write_yaml
from kdistill.cli import main
from kdistill.errors import KdistillError
from kdistill.quickstart import run_quickstart

ROW_KEYS = {"name", "role", "dataset", "split", "accuracy", "params", "size_bytes", "latency_ms",
            "throughput_per_s", "agreement_with_teacher", "seeds", "config_sha256"}


def test_train_with_overrides_writes_the_run_directory(tmp_path, train_config, capsys):
    config = write_yaml(tmp_path / "mlp.yaml", train_config)
    assert main(["train", str(config), "train.epochs=3", "model.hidden=[24]", "seed=5", "-q"]) == 0
    out = Path(train_config["out"])
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["epochs"] == 3 and resolved["model"]["hidden"] == [24] and resolved["seed"] == 5
    assert json.loads((out / "model.json").read_text())["kwargs"] == {"hidden": [24]}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    for name in ("model.safetensors", "last.safetensors", "state/checkpoint.pt", "report.json"):
        assert (out / name).is_file(), name
    row = json.loads((out / "report.json").read_text())["rows"][0]
    assert ROW_KEYS <= set(row) and row["role"] == "teacher" and row["seeds"] == [5]
    assert row["params"] == 64 * 24 + 24 + 24 * 10 + 10
    assert row["size_bytes"] == (out / "model.safetensors").stat().st_size
    assert row["latency_ms"]["batch"] == 1 and row["latency_ms"]["threads"] >= 1
    assert row["latency_ms"]["median"] > 0 and row["throughput_per_s"]["value"] > 0
    assert row["accuracy"] > 0.5
    printed = capsys.readouterr().out
    assert "| mlp | teacher |" in printed and f"{100 * row['accuracy']:.2f}%" in printed


def test_distill_then_evaluate(tmp_path, distill_config, capsys):
    config = write_yaml(tmp_path / "kd.yaml", distill_config)
    assert main(["distill", str(config), "distill.temperature=2", "-q"]) == 0
    out = Path(distill_config["out"])
    row = json.loads((out / "report.json").read_text())["rows"][0]
    assert row["role"] == "distilled" and 0.0 <= row["agreement_with_teacher"] <= 1.0
    first = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][0]
    assert {"ce", "kd", "loss"} <= set(first)
    capsys.readouterr()

    assert main(["evaluate", str(out)]) == 0
    again = json.loads((out / "report.json").read_text())["rows"][0]
    assert again["accuracy"] == row["accuracy"] and again["agreement_with_teacher"] == row["agreement_with_teacher"]
    assert main(["evaluate", str(out), "--split", "val"]) == 0
    val = json.loads((out / "report-val.json").read_text())["rows"][0]
    assert val["split"] == "val" and val["samples"] == 359
    assert "| student | distilled |" in capsys.readouterr().out


def test_unfinished_run_with_other_config_is_refused(tmp_path, train_config):
    out = Path(train_config["out"])
    out.mkdir()
    (out / "config.yaml").write_text("name: other\n")
    before = tree_digest(out)
    config = write_yaml(tmp_path / "mlp.yaml", train_config)
    assert main(["train", str(config), "-q"]) == 2
    assert tree_digest(out) == before


def test_quickstart_table_and_report(tmp_path):
    rows = run_quickstart(tmp_path / "qs")
    assert [r["role"] for r in rows] == ["teacher", "student", "distilled"]
    report = json.loads((tmp_path / "qs" / "report.json").read_text())["rows"]
    assert [r["name"] for r in report] == ["teacher", "student", "distilled"]
    assert rows[0]["params"] > 10 * rows[1]["params"] and rows[1]["params"] == rows[2]["params"]
    assert rows[0]["accuracy"] > 0.95
    assert "| distilled | distilled |" in (tmp_path / "qs" / "report.md").read_text()
    before = tree_digest(tmp_path / "qs")
    with pytest.raises(KdistillError, match="--overwrite"):
        run_quickstart(tmp_path / "qs")
    assert tree_digest(tmp_path / "qs") == before
    # Interrupted after its runs finished but before the table: a rerun reuses every finished run as it is.
    (tmp_path / "qs" / "report.json").unlink()
    runs = {p: p.stat().st_mtime_ns for p in (tmp_path / "qs").rglob("model.safetensors")}
    assert run_quickstart(tmp_path / "qs") == rows
    assert runs and {p: p.stat().st_mtime_ns for p in runs} == runs


def test_cli_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("quickstart", "train", "distill", "evaluate"):
        assert command in result.stdout


def test_example_configs_run_from_the_cli(tmp_path):
    """configs/*.yaml run as documented (teacher first), shortened to one epoch."""
    configs = REPO / "configs"
    teacher_out = tmp_path / "teacher"
    assert main(["train", str(configs / "digits-teacher.yaml"), "train.epochs=1", f"out={teacher_out}", "-q"]) == 0
    assert main(["train", str(configs / "digits-student.yaml"), "train.epochs=1", f"out={tmp_path / 'alone'}", "-q"]) == 0
    for name in ("digits-kd.yaml", "digits-kd-labml.yaml"):
        assert main(["distill", str(configs / name), "train.epochs=1", f"teacher={teacher_out}",
                     f"out={tmp_path / name}", "-q"]) == 0
    labml = [json.loads(line) for line in (tmp_path / "digits-kd-labml.yaml" / "metrics.jsonl").read_text().splitlines()]
    assert {"ce", "kd"} <= set(labml[0])


def test_fashion_mnist_configs_validate_with_their_documented_overrides():
    """The Fashion-MNIST configs need the IDX files to run; here they must at least stay valid as documented."""
    from kdistill.config import DistillRunConfig, TrainRunConfig, load_config

    configs = REPO / "configs"
    assert load_config(configs / "fmnist-teacher.yaml", [], TrainRunConfig).role == "teacher"
    alone = load_config(configs / "fmnist-student.yaml", [], TrainRunConfig)
    dist = load_config(configs / "fmnist-distill.yaml", [], DistillRunConfig)
    assert alone.model.model_dump() == dist.student.model_dump() and alone.train == dist.train and alone.data == dist.data
    assert dist.distill.method == "dist"
    kd = load_config(configs / "fmnist-distill.yaml", ["distill.method=kd", "distill.temperature=1", "distill.alpha=0.5"],
                     DistillRunConfig)
    assert kd.distill.method == "kd" and kd.distill.model_extra == {"temperature": 1, "alpha": 0.5}
    budget = load_config(configs / "fmnist-distill.yaml", ["data.train_samples=5000", "train.epochs=40"], DistillRunConfig)
    assert budget.data.train_samples == 5000
