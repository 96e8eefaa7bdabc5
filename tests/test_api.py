"""The Python API (kdistill.api): the README's example runs as written; the API and the CLI train the same
student from the same data; bad inputs raise one-line KdistillErrors and write nothing."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

import kdistill
from conftest import REPO
from kdistill.config import DataConfig, DistillRunConfig, validate_config
from kdistill.data import load_dataset
from kdistill.runner import run_distill


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- api-example -->\n```python\n(.*?)```\n<!-- /api-example -->", text, re.S)
    assert block, "the README's API example is missing its markers"
    return block.group(1)


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path, capsys):
    code = readme_example()
    assert len(code.splitlines()) <= 40
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        scope: dict = {}
        exec(compile(code, "README.md api-example", "exec"), scope)  # noqa: S102 - our own README
    finally:
        os.chdir(cwd)
    run = scope["run"]
    assert run.out == Path("runs/api-dist") and (tmp_path / "runs/api-dist/report.json").is_file()
    assert run.report["accuracy"] > 0.7 and run.report["agreement_with_teacher"] > 0.7
    record = json.loads((tmp_path / "runs/api-dist/teacher.json").read_text())
    assert record["path"] is None and record["model"].startswith("python:") and len(record["weights_sha256"]) == 64
    assert "validation samples" in capsys.readouterr().err  # a module teacher is checked like a file teacher
    # the hand-written loop trained: its student beats chance by far on the validation images
    mine, x, y = scope["mine"], scope["x"], scope["y"]
    with torch.no_grad():
        assert (mine(x[1400:]).argmax(-1) == y[1400:]).float().mean() > 0.5
    assert torch.isfinite(sum(scope["terms"].values()))


def digits_pairs():
    data = load_dataset(DataConfig(name="digits"))
    return data, [(part.inputs, part.labels) for part in (data.train, data.val, data.test)]


def test_the_api_trains_what_the_cli_trains(teacher_run, distill_config, tmp_path):
    data, (train, val, test) = digits_pairs()
    cli_row = run_distill(validate_config(distill_config, DistillRunConfig), progress=False)
    run = kdistill.distill(str(teacher_run), {"name": "mlp", "hidden": [16]}, train, val, test=test, method="kd",
                           temperature=4.0, alpha=0.1, epochs=2, out=tmp_path / "api", progress=False,
                           config={"data": {"batch_size": 64}, "train": {"lr": 3e-3}}, classes=data.classes)
    assert run.report["accuracy"] == cli_row["accuracy"]
    cli_weights = load_file(str(Path(distill_config["out"]) / "model.safetensors"))
    api_weights = load_file(str(tmp_path / "api" / "model.safetensors"))
    assert all(torch.equal(cli_weights[k], api_weights[k]) for k in cli_weights)
    assert isinstance(run.model, nn.Module) and not run.model.training


def test_a_finished_api_run_is_not_overwritten_unless_asked(tmp_path):
    _, (train, val, _) = digits_pairs()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    first = kdistill.train(model, train, val, epochs=1, out=tmp_path / "alone", progress=False)
    before = (tmp_path / "alone" / "model.safetensors").read_bytes()
    with pytest.raises(kdistill.KdistillError, match="finished run"):
        kdistill.train(model, train, val, epochs=1, out=tmp_path / "alone", progress=False)
    assert (tmp_path / "alone" / "model.safetensors").read_bytes() == before
    again = kdistill.train(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), train, val, epochs=1, out=tmp_path / "alone",
                           progress=False, overwrite=True)
    assert again.report["dataset"] == first.report["dataset"] and again.out == first.out


def test_a_module_teacher_through_the_cache(tmp_path):
    _, (train, val, _) = digits_pairs()
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    kdistill.train(teacher, train, val, epochs=2, out=tmp_path / "teacher", progress=False)
    cache = tmp_path / "cache"
    run = kdistill.distill(teacher, {"name": "mlp", "hidden": [8]}, train, val, epochs=1, out=tmp_path / "kd",
                           progress=False, config={"distill": {"teacher_outputs": "cached", "cache": {"dir": str(cache)}}})
    assert (cache / "header.json").is_file() and 0 <= run.report["accuracy"] <= 1
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training


@pytest.mark.parametrize("case,needle", [
    ("float-labels", "integer class indices"), ("shapes", "differ in shape"), ("range", "outside the"),
    ("not-data", "give a torch Dataset"), ("method", "unknown method"), ("nan", "NaN"),
    ("param", "unknown parameter"), ("config", "unknown key 'train.no_such_key'"),
])
def test_bad_api_input_raises_one_line(tmp_path, case, needle):
    x, y = torch.randn(40, 1, 8, 8), torch.arange(40) % 4
    train, val, kwargs = TensorDataset(x, y), (x[:8], y[:8]), {}
    if case == "float-labels":
        train = TensorDataset(x, y.float())
    elif case == "shapes":
        val = (torch.randn(8, 1, 9, 9), y[:8])
    elif case == "range":
        kwargs["classes"] = ["a", "b"]
    elif case == "not-data":
        train = [1, 2, 3]
    elif case == "method":
        kwargs["method"] = "no-such-method"
    elif case == "nan":
        val = (torch.full((8, 1, 8, 8), float("nan")), y[:8])
    elif case == "param":
        kwargs["no_such_setting"] = 1
    elif case == "config":
        kwargs["config"] = {"train": {"no_such_key": 1}}
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    with pytest.raises(kdistill.KdistillError, match=needle) as info:
        kdistill.distill(teacher, nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), train, val, out=tmp_path / "out",
                         epochs=1, progress=False, **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_methods_build_for_your_own_loop():
    method = kdistill.methods.build("kd", temperature=2.0, alpha=0.0)
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    terms = method(kdistill.Batch(student, torch.zeros(6, dtype=torch.long), torch.arange(6)), student, teacher)
    by_hand = torch.nn.functional.kl_div(torch.log_softmax(student / 2, -1), torch.log_softmax(teacher / 2, -1),
                                         log_target=True, reduction="batchmean") * 4
    assert set(terms) == {"kd"} and torch.allclose(terms["kd"], by_hand)
    with pytest.raises(kdistill.KdistillError, match="temperatur"):
        kdistill.methods.build("kd", temperatur=2.0)
