"""`kdistill sweep` (kdistill.sweep) on digits: it finds, reproduces and resumes; its errors are one line.
The text and causal-LM sweeps are tested beside those tasks (test_text_cli.py, test_lm.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import run_cli, tree_digest, write_yaml
from test_distributed import _config, _metrics


def test_sweep_finds_reproduces_and_resumes(tmp_path, teacher_run):
    pytest.importorskip("optuna")
    cfg = _config(tmp_path, teacher_run, "sw", epochs=3)
    del cfg["out"]
    cfg["sweep"] = {"seed": 1, "startup_trials": 2}
    path = write_yaml(tmp_path / "sweep.yaml", cfg)
    out = tmp_path / "sweep"
    result = run_cli("sweep", str(path), "--trials", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "trials.json").read_text())
    assert len(summary["trials"]) == 8
    states = {t["state"] for t in summary["trials"]}
    assert states <= {"complete", "pruned"} and "complete" in states
    best = summary["best"]
    complete = [t for t in summary["trials"] if t["state"] == "complete"]
    assert best["val_accuracy"] == max(t["val_accuracy"] for t in complete)
    for t in complete:
        values = t["overrides"]
        assert 1.0 <= values["distill.temperature"] <= 20.0 and 0.0 <= values["distill.alpha"] <= 1.0
        metrics = _metrics(Path(t["run_dir"]))
        assert t["val_accuracy"] == max(m["val_accuracy"] for m in metrics)  # the objective is the run's best epoch
    for t in summary["trials"]:
        if t["state"] == "pruned":
            assert len(_metrics(Path(t["run_dir"]))) < 3
    assert "(best)" in (out / "trials.md").read_text()

    # best.yaml, passed back to `kdistill distill`, reproduces the best trial's validation accuracy.
    best_cfg = yaml.safe_load((out / "best.yaml").read_text())
    assert best_cfg["distill"]["temperature"] == best["overrides"]["distill.temperature"]
    again = run_cli("distill", str(out / "best.yaml"), "-q")
    assert again.returncode == 0, again.stderr
    assert max(m["val_accuracy"] for m in _metrics(out / "best")) == pytest.approx(best["val_accuracy"], abs=1e-9)

    # The same command with more trials continues the study; the first 8 stay as they were.
    before = {t["trial"]: t["val_accuracy"] for t in summary["trials"]}
    more = run_cli("sweep", str(path), "--trials", "10", "--out", str(out))
    assert more.returncode == 0, more.stderr
    resumed = json.loads((out / "trials.json").read_text())
    assert len(resumed["trials"]) == 10
    assert {t["trial"]: t["val_accuracy"] for t in resumed["trials"] if t["trial"] < 8} == before
    # Another search space (or config) in the same folder would mix incomparable trials: refused.
    other = run_cli("sweep", str(path), "--trials", "12", "--out", str(out), "--methods", "kd", "dist")
    assert other.returncode == 2 and "another config or search space" in other.stderr
    methods = run_cli("sweep", str(path), "--trials", "3", "--out", str(tmp_path / "methods"), "--methods", "kd", "dist")
    assert methods.returncode == 0, methods.stderr
    assert all("distill.method" in t["overrides"] for t in json.loads((tmp_path / "methods" / "trials.json").read_text())["trials"])


def test_sweep_errors_are_one_line(tmp_path, teacher_run):
    pytest.importorskip("optuna")
    cfg = _config(tmp_path, teacher_run, "bad", epochs=1)
    cfg["sweep"] = {"space": {"distill.temperature": {"low": 5, "high": 1}}}
    result = run_cli("sweep", str(write_yaml(tmp_path / "bad.yaml", cfg)), "--out", str(tmp_path / "s1"))
    assert result.returncode == 2 and "low must be below high" in result.stderr and len(result.stderr.splitlines()) == 1
    cfg["sweep"] = {"space": {"distill.temprature": {"low": 1, "high": 5}}}
    result = run_cli("sweep", str(write_yaml(tmp_path / "typo.yaml", cfg)), "--out", str(tmp_path / "s4"))
    assert result.returncode == 2 and "distill.temprature is not a setting of any method" in result.stderr
    cfg["sweep"] = {"spaces": {}}
    result = run_cli("sweep", str(write_yaml(tmp_path / "bad2.yaml", cfg)), "--out", str(tmp_path / "s2"))
    assert result.returncode == 2 and "unknown key 'spaces'" in result.stderr
    del cfg["sweep"]
    result = run_cli("sweep", str(write_yaml(tmp_path / "ok.yaml", cfg)), "--methods", "nope", "--out", str(tmp_path / "s3"))
    assert result.returncode == 2 and "unknown method 'nope'" in result.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    before = tree_digest(mine)
    result = run_cli("sweep", str(tmp_path / "ok.yaml"), "--out", str(mine))
    assert result.returncode == 2 and "holds no sweep" in result.stderr
    assert tree_digest(mine) == before
