"""Every method by name through `distill`: it trains (its loss falls), logs each term, leaves no hooks,
and bad method settings are one-line errors before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli, write_yaml
from kdistill.config import DistillRunConfig, validate_config
from kdistill.errors import KdistillError
from kdistill.methods import METHODS, build_distill_method
from kdistill.runner import run_distill

# method -> (extra params, terms expected in metrics.jsonl)
METHOD_CASES = {
    "kd": ({}, {"ce", "kd"}),
    "dkd": ({"warmup_epochs": 0}, {"ce", "dkd"}),
    "dist": ({}, {"ce", "dist"}),
    "ls_kd": ({}, {"ce", "ls_kd"}),
    "fitnet": ({}, {"ce", "hint"}),
    "at": ({}, {"ce", "at"}),
    "pkt": ({}, {"ce", "pkt"}),
    "rkd": ({}, {"ce", "rkd_distance", "rkd_angle"}),
    "sp": ({}, {"ce", "sp"}),
}


def _config(tmp_path: Path, teacher_run: Path, distill: dict, epochs: int = 3) -> dict:
    return {"name": "m", "seed": 0, "data": {"name": "digits", "batch_size": 64}, "teacher": str(teacher_run),
            "student": {"name": "cnn", "channels": [4, 8]}, "distill": distill,
            "train": {"epochs": epochs, "lr": 3e-3}, "out": str(tmp_path / "run")}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_every_registered_method_has_a_case():
    assert set(METHOD_CASES) == set(METHODS) - {"ce"}


@pytest.mark.parametrize("name", sorted(METHOD_CASES))
def test_method_trains_from_the_cli_path_and_logs_its_terms(tmp_path, teacher_run, name, monkeypatch):
    params, terms = METHOD_CASES[name]
    seen = {}
    import kdistill.runner as runner

    real_build, real_load = runner.build_model, runner.load_teacher
    monkeypatch.setattr(runner, "build_model", lambda *a, **k: seen.setdefault("student", real_build(*a, **k)))
    monkeypatch.setattr(runner, "load_teacher", lambda *a, **k: seen.setdefault("teacher", real_load(*a, **k)))
    cfg = validate_config(_config(tmp_path, teacher_run, {"method": name, **params}), DistillRunConfig)
    run_distill(cfg, progress=False)
    metrics = _metrics(tmp_path / "run")
    assert terms <= set(metrics[0]), f"{name} logged {sorted(metrics[0])}"
    assert metrics[-1]["loss"] < metrics[0]["loss"], [m["loss"] for m in metrics]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    for model in (seen["student"], seen["teacher"].model):  # no forward hooks left behind
        assert all(not m._forward_hooks for m in model.modules()), name


def test_fitnet_connector_trains_with_the_student_and_is_checkpointed(tmp_path, teacher_run):
    cfg = validate_config(_config(tmp_path, teacher_run, {"method": "fitnet", "student": "stage1", "teacher": "stages.1"}, 2),
                          DistillRunConfig)
    run_distill(cfg, progress=False)
    state = torch.load(tmp_path / "run" / "state" / "checkpoint.pt", weights_only=True)
    weight = state["method"]["regressor.0.weight"]
    assert weight.shape == (16, 4, 1, 1)  # student stage1 (4 channels) -> teacher stage2 (16 channels)
    torch.manual_seed(0)
    method = build_distill_method("fitnet", {}, [])
    assert list(method.state_dict()) == []  # the connector only exists once bound to the two models


def test_terms_add_weighted_extra_terms_and_log_each(tmp_path, teacher_run):
    distill = {"method": "kd", "kd": {"temperature": 4.0, "alpha": 0.5},
               "terms": [{"method": "at", "weight": 2.0, "student": "stage2", "teacher": "stage2"},
                         {"method": "kd", "weight": 0.5, "temperature": 1.0}]}
    cfg = validate_config(_config(tmp_path, teacher_run, distill, 2), DistillRunConfig)
    run_distill(cfg, progress=False)
    first = _metrics(tmp_path / "run")[0]
    assert {"ce", "kd", "at", "kd_term2"} <= set(first)
    parts = sum(first[k] for k in ("ce", "kd", "at", "kd_term2"))
    assert abs(first["loss"] - parts) < 1e-4 * max(1.0, abs(parts))


def test_terms_are_weighted_and_drop_their_own_ce():
    from kdistill.data.splits import Batch

    s, t = torch.randn(6, 10), torch.randn(6, 10)
    batch = Batch(torch.zeros(6, 1), torch.tensor([0, 1, 2, 3, 4, 5]), torch.arange(6))
    main = build_distill_method("dist", {}, [])
    combined = build_distill_method("dist", {}, [{"method": "dkd", "weight": 3.0, "warmup_epochs": 0},
                                                  {"method": "ls_kd", "weight": 0.0}])
    alone = build_distill_method("dkd", {"warmup_epochs": 0, "ce_weight": 0.0}, [])
    got = combined(batch, s, t)
    assert set(got) == {"ce", "dist", "dkd", "ls_kd"}
    assert torch.allclose(got["dkd"], 3.0 * alone(batch, s, t)["dkd"])
    assert torch.allclose(got["dist"], main(batch, s, t)["dist"]) and float(got["ls_kd"]) == 0.0


def test_dkd_warmup_ramps_the_term():
    method = build_distill_method("dkd", {"warmup_epochs": 4}, [])
    ramps = []
    for epoch in range(6):
        method.start_epoch(epoch, 6)
        ramps.append(method.ramp)
    assert ramps == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_one_config_switches_methods_with_one_value(tmp_path, teacher_run):
    distill = {"method": "kd", "kd": {"temperature": 2.0, "alpha": 0.3}, "dkd": {"beta": 4.0, "warmup_epochs": 1},
               "at": {"weight": 10.0}}
    path = write_yaml(tmp_path / "cmp.yaml", _config(tmp_path, teacher_run, distill, 1))
    for name in ("kd", "dkd", "at"):
        result = run_cli("distill", str(path), f"distill.method={name}", f"out={tmp_path / name}", "-q")
        assert result.returncode == 0, result.stderr
    assert "at" in _metrics(tmp_path / "at")[0] and "dkd" in _metrics(tmp_path / "dkd")[0]


@pytest.mark.parametrize("distill, needles", [
    ({"method": "dkd", "temperature": 4.0, "gamma": 1.0}, ["unknown parameter 'distill.gamma'", "beta", "own section"]),
    ({"method": "kd", "dkd": {"betta": 2}}, ["distill.dkd", "unknown parameter 'distill.dkd.betta'"]),
    ({"method": "kd", "dkd": 3}, ["distill.dkd: the parameters of method 'dkd' must be a mapping"]),
    ({"method": "nope"}, ["unknown method 'nope'", "dkd", "fitnet"]),
    ({"method": "kd", "terms": [{"method": "at", "weight": -1}]}, ["distill.terms[0].weight must be a number >= 0"]),
    ({"method": "kd", "terms": [{"weight": 1}]}, ["distill.terms[0]: a term is a mapping with a method name"]),
    ({"method": "kd", "terms": [{"method": "sp", "wieght": 1}]}, ["unknown parameter 'distill.terms[0].wieght'"]),
    ({"method": "fitnet", "student": "layer9"}, ["no module named 'layer9'", "available modules:", "stages.0", "stage1=stages.0"]),
    ({"method": "at", "student": "pool"}, ["attention transfer needs feature maps", "'pool'"]),
    ({"method": "fitnet", "student": "pool", "teacher": "stage2"}, ["cannot connect student 'pool'", "teacher 'stages.1'"]),
    ({"method": "at", "teacher_outputs": "cached"}, ["reads the teacher's intermediate features", "teacher_outputs=live"]),
])
def test_bad_method_settings_are_one_line_errors_before_anything_is_written(tmp_path, teacher_run, distill, needles):
    path = write_yaml(tmp_path / "bad.yaml", _config(tmp_path, teacher_run, distill, 1))
    result = run_cli("distill", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdistill: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_a_failed_bind_leaves_no_hooks(teacher_run):
    from kdistill.models import build_model
    from kdistill.teachers import load_teacher

    student = build_model("cnn", {"channels": [4, 8]}, (1, 8, 8), 10)
    teacher = load_teacher(teacher_run)
    method = build_distill_method("at", {"student": "pool"}, [])
    with pytest.raises(KdistillError):
        method.bind(student, teacher.model, torch.zeros(2, 1, 8, 8))
    assert all(not m._forward_hooks for m in list(student.modules()) + list(teacher.model.modules()))
