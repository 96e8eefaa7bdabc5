"""Methods built by name: the loss terms they return and how they reject bad hyperparameters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from kdistill.data.splits import Batch
from kdistill.errors import KdistillError
from kdistill.losses import kd_loss
from kdistill.methods import METHODS, build_method


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
