"""Methods built by name: the loss terms they return and how they reject bad hyperparameters; and every
method by name through `distill`: it trains (its loss falls), logs each term, leaves no hooks, and bad
method settings are one-line errors before anything is written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from conftest import run_cli, write_yaml
from kdistill.config import DistillRunConfig, validate_config
from kdistill.data.splits import Batch
from kdistill.errors import KdistillError
from kdistill.losses import kd_loss
from kdistill.methods import METHODS, build_distill_method, build_method
from kdistill.runner import run_distill


def _softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [v / temperature for v in row]
    top = max(scaled)
    exps = [math.exp(v - top) for v in scaled]
    return [e / sum(exps) for e in exps]


def loop_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    """Batch mean of KL(softmax(t/T) ‖ softmax(s/T)), by hand on python floats (no T²)."""
    total = 0.0
    for zs, zt in zip(student.tolist(), teacher.tolist()):
        ps, pt = _softmax(zs, temperature), _softmax(zt, temperature)
        total += sum(pt[c] * (math.log(pt[c]) - math.log(ps[c])) for c in range(len(zs)))
    return total / student.shape[0]


def loop_ce(student: torch.Tensor, labels: torch.Tensor) -> float:
    rows = student.tolist()
    return sum(-math.log(_softmax(z)[y]) for z, y in zip(rows, labels.tolist())) / len(rows)


def _scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


@pytest.fixture
def example():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 5, generator=g) * 2
    t = torch.randn(6, 5, generator=g) * 2
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    batch = Batch(torch.zeros(6, 1, 2, 2), y, torch.arange(6))
    return batch, s, t


def test_kd_method_terms_are_weighted_ce_and_kd(example):
    batch, s, t = example
    method = build_method("kd", {"temperature": 4, "alpha": 0.3})
    assert method.needs_teacher is True
    terms = method(batch, s, t)
    assert set(terms) == {"ce", "kd"}
    # against the library's own loss functions ...
    assert_close(terms["ce"], 0.3 * F.cross_entropy(s, batch.labels))
    assert_close(terms["kd"], 0.7 * kd_loss(s, t, 4.0))
    # ... and against the explicit loop (T² = 16 on the soft term)
    assert_close(terms["ce"], _scalar(0.3 * loop_ce(s, batch.labels)), rtol=1e-4, atol=1e-6)
    assert_close(terms["kd"], _scalar(0.7 * 16 * loop_kl(s, t, 4.0)), rtol=1e-4, atol=1e-6)


def test_kd_method_defaults(example):
    batch, s, t = example
    terms = build_method("kd", {})(batch, s, t)
    # defaults: temperature 4, alpha 0.1, T² on
    assert_close(terms["ce"], _scalar(0.1 * loop_ce(s, batch.labels)), rtol=1e-4, atol=1e-6)
    assert_close(terms["kd"], _scalar(0.9 * 16 * loop_kl(s, t, 4.0)), rtol=1e-4, atol=1e-6)


def test_labml_recipe_through_kd_method(example):
    batch, s, t = example
    method = build_method("kd", {"temperature": 5, "hard_weight": 0.5, "soft_weight": 100, "t_squared": False})
    terms = method(batch, s, t)
    assert set(terms) == {"ce", "kd"}
    ce, kl = loop_ce(s, batch.labels), loop_kl(s, t, 5.0)
    assert_close(terms["ce"], _scalar(0.5 * ce), rtol=1e-4, atol=1e-6)
    assert_close(terms["kd"], _scalar(100 * kl), rtol=1e-4, atol=1e-5)
    total = sum(terms.values())
    assert_close(total, _scalar(0.5 * ce + 100 * kl), rtol=1e-4, atol=1e-5)
    # no T² anywhere: with it the soft term would be 25× larger
    assert not math.isclose(total.item(), 0.5 * ce + 100 * 25 * kl, rel_tol=1e-2)


def test_alpha_one_keeps_only_ce_weight(example):
    """alpha=1: the soft term has weight 0, so it is left out (not computed as 0 * kd)."""
    batch, s, t = example
    terms = build_method("kd", {"temperature": 4, "alpha": 1.0})(batch, s.clone().requires_grad_(True), t)
    assert set(terms) == {"ce"}
    assert_close(terms["ce"], _scalar(loop_ce(s, batch.labels)), rtol=1e-4, atol=1e-6)
    # the summed objective equals plain CE, gradient included
    x = s.clone().requires_grad_(True)
    sum(build_method("kd", {"alpha": 1.0})(batch, x, t).values()).backward()
    y = s.clone().requires_grad_(True)
    F.cross_entropy(y, batch.labels).backward()
    assert_close(x.grad, y.grad)


def test_alpha_zero_has_no_ce_term(example):
    batch, s, t = example
    terms = build_method("kd", {"temperature": 2, "alpha": 0.0})(batch, s, t)
    assert set(terms) == {"kd"}
    assert_close(terms["kd"], _scalar(4 * loop_kl(s, t, 2.0)), rtol=1e-4, atol=1e-6)


def test_hard_weight_zero_has_no_ce_term(example):
    batch, s, t = example
    terms = build_method("kd", {"hard_weight": 0, "soft_weight": 2.0})(batch, s, t)
    assert set(terms) == {"kd"}


# --- bad parameters ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "params,expected",
    [
        ({"temprature": 4}, "unknown parameter 'distill.temprature'"),
        ({"temperature": 0}, "temperature: input should be greater than 0"),
        ({"temperature": -2.0}, "temperature: input should be greater than 0"),
        ({"alpha": 1.5}, "alpha: input should be less than or equal to 1"),
        ({"alpha": -0.5}, "alpha: input should be greater than or equal to 0"),
        ({"hard_weight": 0.5}, "give both hard_weight and soft_weight"),
        ({"soft_weight": 100}, "give both hard_weight and soft_weight"),
    ],
)
def test_kd_bad_params_raise_kdistill_error(params, expected):
    with pytest.raises(KdistillError) as info:
        build_method("kd", params)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_param_message_uses_where():
    with pytest.raises(KdistillError, match=r"unknown parameter 'cfg\.temprature'"):
        build_method("kd", {"temprature": 1}, where="cfg")


def test_unknown_method_lists_known_ones():
    with pytest.raises(KdistillError) as info:
        build_method("hinton", {})
    msg = str(info.value)
    assert "'hinton'" in msg
    for known in ("ce", "kd"):
        assert known in msg
    assert set(METHODS) >= {"ce", "kd"}
    assert f"known: {', '.join(sorted(METHODS))}" in msg


# --- ce ---------------------------------------------------------------------------------------

def test_ce_method(example):
    batch, s, _ = example
    method = build_method("ce", {})
    assert method.needs_teacher is False
    terms = method(batch, s, None)
    assert set(terms) == {"ce"}
    assert_close(terms["ce"], F.cross_entropy(s, batch.labels))
    assert_close(terms["ce"], _scalar(loop_ce(s, batch.labels)), rtol=1e-4, atol=1e-6)


def test_ce_label_smoothing(example):
    batch, s, _ = example
    eps, k = 0.2, s.shape[1]
    terms = build_method("ce", {"label_smoothing": eps})(batch, s, None)
    # by hand: target (1 - eps) on the label + eps / K everywhere
    total = 0.0
    for z, y in zip(s.tolist(), batch.labels.tolist()):
        logp = [math.log(p) for p in _softmax(z)]
        total += -sum(((1 - eps) * (c == y) + eps / k) * logp[c] for c in range(k))
    assert_close(terms["ce"], _scalar(total / s.shape[0]), rtol=1e-4, atol=1e-6)
    assert not math.isclose(terms["ce"].item(), loop_ce(s, batch.labels), rel_tol=1e-3)


@pytest.mark.parametrize("params,name", [({"label_smoothing": 1.0}, "label_smoothing: input should be less than 1"),
                                         ({"temperature": 4}, "unknown parameter 'distill.temperature'")])
def test_ce_bad_params(params, name):
    with pytest.raises(KdistillError) as info:
        build_method("ce", params)
    assert name in str(info.value)


def test_kd_with_alpha_one_does_not_need_the_teacher():
    assert build_method("kd", {"alpha": 1.0}).needs_teacher is False
    assert build_method("kd", {"alpha": 0.5}).needs_teacher is True


# --- every method through distill -------------------------------------------------------------

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
    "crd": ({"negatives": 64}, {"ce", "crd"}),
    "tf_kd": ({}, {"ce", "tf_kd"}),
    "dml": ({}, {"ce", "dml", "peer_ce", "peer_dml"}),
}


def _config(tmp_path: Path, teacher_run: Path, distill: dict, epochs: int = 3) -> dict:
    return {"name": "m", "seed": 0, "data": {"name": "digits", "batch_size": 64}, "teacher": str(teacher_run),
            "student": {"name": "cnn", "channels": [4, 8]}, "distill": distill,
            "train": {"epochs": epochs, "lr": 3e-3}, "out": str(tmp_path / "run")}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_every_registered_method_has_a_case():
    """Every vision method is trained here; the causal-LM ones in tests/test_losses_tokens.py and tests/test_lm.py,
    the text feature methods in tests/test_transformer_methods.py and tests/test_text_cli.py."""
    assert set(METHOD_CASES) == {name for name, cls in METHODS.items() if "vision" in cls.tasks} - {"ce"}
    assert {name for name, cls in METHODS.items() if "vision" not in cls.tasks} == {
        "forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tv", "tinybert", "minilm"}


@pytest.mark.parametrize("name", sorted(METHOD_CASES))
def test_method_trains_from_the_cli_path_and_logs_its_terms(tmp_path, teacher_run, name, monkeypatch):
    params, terms = METHOD_CASES[name]
    seen = {}
    import kdistill.runner as runner

    real_build, real_load = runner.build_model, runner.load_teacher
    monkeypatch.setattr(runner, "build_model", lambda *a, **k: seen.setdefault("student", real_build(*a, **k)))
    monkeypatch.setattr(runner, "load_teacher", lambda *a, **k: seen.setdefault("teacher", real_load(*a, **k)))
    # CRD's first epoch scores against a memory bank of random vectors (its normaliser is estimated
    # there), so its loss rises once the bank holds real embeddings: compare from epoch 2 on.
    first = 1 if name == "crd" else 0
    cfg = validate_config(_config(tmp_path, teacher_run, {"method": name, **params}, epochs=3 + first), DistillRunConfig)
    run_distill(cfg, progress=False)
    metrics = _metrics(tmp_path / "run")
    assert terms <= set(metrics[0]), f"{name} logged {sorted(metrics[0])}"
    assert metrics[-1]["loss"] < metrics[first]["loss"], [m["loss"] for m in metrics]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    for model in (seen["student"], seen["teacher"].model):  # no forward hooks left behind
        assert all(not m._forward_hooks for m in model.modules()), name


def test_fitnet_connector_trains_with_the_student_and_is_checkpointed(tmp_path, teacher_run):
    cfg = validate_config(_config(tmp_path, teacher_run, {"method": "fitnet", "student": "stage1", "teacher": "stages.1"}, 2),
                          DistillRunConfig)
    run_distill(cfg, progress=False)
    state = torch.load(tmp_path / "run" / "state" / "checkpoint.pt", weights_only=True)
    weight = state["method"]["regressors.0.0.weight"]
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
    from kdistill.training.teachers import load_teacher

    student = build_model("cnn", {"channels": [4, 8]}, (1, 8, 8), 10)
    teacher = load_teacher(teacher_run)
    method = build_distill_method("at", {"student": "pool"}, [])
    with pytest.raises(KdistillError):
        method.bind(student, teacher.model, torch.zeros(2, 1, 8, 8))
    assert all(not m._forward_hooks for m in list(student.modules()) + list(teacher.model.modules()))


# --- teacher-free, mutual, ensemble and chained teachers ---------------------------------------

def test_tf_kd_virtual_teacher_and_loss_match_the_paper():
    import math

    from kdistill.data.splits import Batch
    from kdistill.methods.tf_kd import virtual_teacher_logits

    labels = torch.tensor([2, 0, 4])
    probs = torch.softmax(virtual_teacher_logits(labels, 5, 0.9), dim=-1)
    for row, y in zip(probs.tolist(), labels.tolist()):
        assert all(math.isclose(p, 0.9 if c == y else 0.025, rel_tol=1e-6) for c, p in enumerate(row))
    s = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    method = build_distill_method("tf_kd", {"alpha": 0.7, "temperature": 2.0, "correct_prob": 0.9}, [])
    terms = method(Batch(torch.zeros(3, 1), labels, torch.arange(3)), s, None)
    expected = 0.0
    for zs, y in zip(s.tolist(), labels.tolist()):
        pd = [0.9 if c == y else 0.025 for c in range(5)]
        pd_t = [p ** 0.5 for p in pd]  # softmax(log p / 2)
        pd_t = [p / sum(pd_t) for p in pd_t]
        ps_t = [math.exp(z / 2) for z in zs]
        ps_t = [p / sum(ps_t) for p in ps_t]
        expected += sum(a * math.log(a / b) for a, b in zip(pd_t, ps_t))
    expected = 0.7 * 4.0 * expected / 3
    assert math.isclose(float(terms["tf_kd"]), expected, rel_tol=1e-4)
    assert not method.needs_teacher


def test_teacher_free_methods_run_without_a_teacher_and_others_ask_for_one(tmp_path):
    for name in ("tf_kd", "dml"):
        cfg = {"name": name, "data": {"name": "digits", "batch_size": 64}, "student": {"name": "mlp", "hidden": [16]},
               "distill": {"method": name}, "train": {"epochs": 1}, "out": str(tmp_path / name)}
        row = run_distill(validate_config(cfg, DistillRunConfig), progress=False)
        assert row["role"] == "distilled" and row["agreement_with_teacher"] is None
        assert not (tmp_path / name / "teacher.json").exists()
        assert run_cli("evaluate", str(tmp_path / name)).returncode == 0
    path = write_yaml(tmp_path / "kd.yaml", {**cfg, "distill": {"method": "kd"}, "out": str(tmp_path / "kd")})
    result = run_cli("distill", str(path))
    assert result.returncode == 2 and "teacher: missing; method 'kd' learns from a teacher" in result.stderr
    assert not (tmp_path / "kd").exists()


def test_dml_peer_trains_alongside_and_is_checkpointed(tmp_path):
    cfg = {"name": "dml", "data": {"name": "digits", "batch_size": 64}, "student": {"name": "mlp", "hidden": [16]},
           "distill": {"method": "dml", "peer": {"name": "mlp", "hidden": [32]}}, "train": {"epochs": 2},
           "out": str(tmp_path / "dml")}
    run_distill(validate_config(cfg, DistillRunConfig), progress=False)
    state = torch.load(tmp_path / "dml" / "state" / "checkpoint.pt", weights_only=True)
    peer = {k: v for k, v in state["method"].items() if k.startswith("peer.")}
    assert peer and any(v.shape[0] == 32 for v in peer.values())
    assert state["optimizer"]["param_groups"][0]["params"].__len__() == 4 + 4  # two Linear layers each: student mlp[16], peer mlp[32]


def test_ensemble_teacher_averages_member_logits(tmp_path, teacher_run):
    import shutil

    from kdistill.models import load_run_model, save_weights
    from kdistill.training.teachers import load_teacher

    second = tmp_path / "second"
    shutil.copytree(teacher_run, second)
    model, _ = load_run_model(second)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    save_weights(model, second / "model.safetensors")
    ensemble = load_teacher([str(teacher_run), str(second)])
    x = torch.randn(5, 1, 8, 8)
    a, b = load_teacher(teacher_run)(x), load_teacher(second)(x)
    assert torch.allclose(ensemble(x), (a + b) / 2, atol=1e-6)
    assert ensemble.weights_sha256 not in (load_teacher(teacher_run).weights_sha256, load_teacher(second).weights_sha256)

    cfg = validate_config(_config(tmp_path, teacher_run, {"method": "kd"}, 1) | {"teacher": [str(teacher_run), str(second)]},
                          DistillRunConfig)
    run_distill(cfg, progress=False)
    record = json.loads((tmp_path / "run" / "teacher.json").read_text())
    assert record["path"] == [str(teacher_run), str(second)]
    assert run_cli("evaluate", str(tmp_path / "run")).returncode == 0


def test_ensemble_members_must_agree(tmp_path, teacher_run):
    other = write_yaml(tmp_path / "t.yaml", {"name": "t", "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [8]},
                                             "train": {"epochs": 1}, "out": str(tmp_path / "other")})
    assert run_cli("train", str(other), "-q").returncode == 0
    spec = json.loads((tmp_path / "other" / "model.json").read_text())
    spec["classes"] = [f"c{i}" for i in range(10)]
    (tmp_path / "other" / "model.json").write_text(json.dumps(spec))
    path = write_yaml(tmp_path / "kd.yaml", _config(tmp_path, teacher_run, {"method": "kd"}, 1)
                      | {"teacher": [str(teacher_run), str(tmp_path / "other")]})
    result = run_cli("distill", str(path))
    assert result.returncode == 2 and "ensemble members" in result.stderr and "differ in classes" in result.stderr


def test_teacher_assistant_chain_and_born_again_generations(tmp_path, teacher_run):
    """TAKD and born-again networks are chains of distill runs: a distilled run directory is a teacher."""
    assistant = _config(tmp_path, teacher_run, {"method": "kd"}, 2) | {"student": {"name": "cnn", "channels": [6, 12]},
                                                                        "out": str(tmp_path / "assistant")}
    run_distill(validate_config(assistant, DistillRunConfig), progress=False)
    student = _config(tmp_path, tmp_path / "assistant", {"method": "kd"}, 2) | {"out": str(tmp_path / "student")}
    row = run_distill(validate_config(student, DistillRunConfig), progress=False)
    assert json.loads((tmp_path / "student" / "teacher.json").read_text())["path"] == str(tmp_path / "assistant")
    assert 0 < row["agreement_with_teacher"] <= 1
    teacher_arch = json.loads((teacher_run / "model.json").read_text())
    previous = teacher_run
    for generation in (1, 2):  # born-again: the student has the teacher's architecture
        cfg = _config(tmp_path, previous, {"method": "kd"}, 1) | {
            "student": {"name": teacher_arch["name"], **teacher_arch["kwargs"]}, "out": str(tmp_path / f"gen{generation}")}
        run_distill(validate_config(cfg, DistillRunConfig), progress=False)
        previous = tmp_path / f"gen{generation}"
    assert json.loads((tmp_path / "gen2" / "model.json").read_text())["kwargs"] == teacher_arch["kwargs"]


def test_crd_memory_bank_moves_only_the_batch_rows_and_never_draws_the_positive(teacher_run, monkeypatch):
    from kdistill.data.splits import Batch
    from kdistill.models import build_model
    from kdistill.training.teachers import load_teacher

    torch.manual_seed(0)
    student = build_model("cnn", {"channels": [4, 8]}, (1, 8, 8), 10)
    teacher = load_teacher(teacher_run)
    method = build_distill_method("crd", {"negatives": 9, "feat_dim": 16}, [])
    method.bind(student, teacher.model, torch.zeros(2, 1, 8, 8), num_samples=10)
    drawn = []
    real_cat = torch.cat

    def spy_cat(tensors, dim=0):
        out = real_cat(tensors, dim=dim)
        if dim == 1 and out.shape[-1] == 10:
            drawn.append(out.clone())
        return out

    before = method.memory_student.clone()
    x = torch.randn(3, 1, 8, 8)
    index = torch.tensor([1, 4, 7])
    logits = student(x)
    teacher(x)
    monkeypatch.setattr(torch, "cat", spy_cat)
    terms = method(Batch(x, torch.tensor([0, 1, 2]), index), logits, None)
    monkeypatch.setattr(torch, "cat", real_cat)
    assert torch.isfinite(terms["crd"]) and float(method.normalizers[0]) > 0
    changed = (method.memory_student != before).any(dim=1)
    assert changed.tolist() == [i in (1, 4, 7) for i in range(10)]
    assert torch.allclose(method.memory_student[index].norm(dim=1), torch.ones(3))
    contrast = drawn[0]
    assert torch.equal(contrast[:, 0], index)
    for row, positive in zip(contrast[:, 1:].tolist(), index.tolist()):  # drawn with replacement from the 9 others
        assert positive not in row and all(0 <= i < 10 for i in row)
    method.unbind()


def test_at_pairs_every_stage_by_default_and_lists_pair_in_order(teacher_run):
    from kdistill.data.splits import Batch
    from kdistill.losses import at_loss
    from kdistill.models import build_model
    from kdistill.training.teachers import load_teacher

    student = build_model("cnn", {"channels": [4, 8]}, (1, 8, 8), 10)
    teacher = load_teacher(teacher_run)
    method = build_distill_method("at", {"ce_weight": 0.0, "weight": 1.0}, [])
    method.bind(student, teacher.model, torch.zeros(2, 1, 8, 8))
    assert method.pairs == [("stages.0", "stages.0"), ("stages.1", "stages.1")]
    x = torch.randn(4, 1, 8, 8)
    logits = student(x)
    teacher(x)
    got = method(Batch(x, torch.zeros(4, dtype=torch.long), torch.arange(4)), logits, None)["at"]
    s0, s1 = student.stages[0](x), None
    s1 = student.stages[1](s0)
    t0 = teacher.model.stages[0](x)
    t1 = teacher.model.stages[1](t0)
    assert torch.allclose(got, at_loss(s0, t0.detach()) + at_loss(s1, t1.detach()), atol=1e-6)
    method.unbind()

    fit = build_distill_method("fitnet", {"student": ["stage1", "stage2"], "teacher": "stage2"}, [])
    fit.bind(student, teacher.model, torch.zeros(2, 1, 8, 8))
    assert fit.pairs == [("stages.0", "stages.1"), ("stages.1", "stages.1")] and len(fit.regressors) == 2
    fit.unbind()
    bad = build_distill_method("sp", {"student": ["stage1", "stage2"], "teacher": ["stage1", "stage2", "pool"]}, [])
    with pytest.raises(KdistillError, match="student and teacher list 2 and 3 modules"):
        bad.bind(student, teacher.model, torch.zeros(2, 1, 8, 8))
