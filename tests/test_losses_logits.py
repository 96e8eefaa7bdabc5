"""kd_loss / distillation_loss against explicit python-float loops (no torch.nn.functional)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from kdistill.losses import distillation_loss, kd_loss


def _softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [v / temperature for v in row]
    top = max(scaled)
    exps = [math.exp(v - top) for v in scaled]
    total = sum(exps)
    return [e / total for e in exps]


def loop_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float, t_squared: bool = True) -> float:
    """mean over samples of sum_c p_t,c (log p_t,c - log p_s,c), p = softmax(logits / T), times T² if asked."""
    rows_s, rows_t = student.tolist(), teacher.tolist()
    total = 0.0
    for zs, zt in zip(rows_s, rows_t):
        ps, pt = _softmax(zs, temperature), _softmax(zt, temperature)
        total += sum(pt[c] * (math.log(pt[c]) - math.log(ps[c])) for c in range(len(zs)))
    mean = total / len(rows_s)
    return mean * temperature**2 if t_squared else mean


def loop_ce(student: torch.Tensor, labels: torch.Tensor) -> float:
    """-log softmax(s)[y], averaged over the batch."""
    rows = student.tolist()
    return sum(-math.log(_softmax(z)[y]) for z, y in zip(rows, labels.tolist())) / len(rows)


def _logits(seed: int, shape=(5, 7), scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 10.0])
def test_kd_loss_matches_explicit_loop(temperature):
    s, t = _logits(1), _logits(2)
    got = kd_loss(s, t, temperature)
    expected = loop_kd(s, t, temperature)
    assert expected > 0.01  # a real, non-degenerate value
    assert_close(got, _scalar(expected), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 10.0])
def test_kd_loss_without_t_squared_matches_loop(temperature):
    s, t = _logits(3), _logits(4)
    got = kd_loss(s, t, temperature, t_squared=False)
    assert_close(got, _scalar(loop_kd(s, t, temperature, t_squared=False)), rtol=1e-4, atol=1e-7)
    if temperature != 1.0:  # the two variants genuinely differ by T²
        with_t2 = kd_loss(s, t, temperature)
        assert_close(with_t2, got * temperature**2, rtol=1e-5, atol=1e-7)
        assert not torch.isclose(with_t2, got, rtol=1e-2)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kd_loss_zero_for_equal_or_shifted_logits(temperature):
    t = _logits(5)
    assert abs(kd_loss(t.clone(), t, temperature).item()) < 1e-6
    shift = torch.tensor([[3.0], [-7.5], [0.25], [100.0], [-0.1]])  # a different constant per row
    assert abs(kd_loss(t + shift, t, temperature).item()) < 1e-6
    assert abs(kd_loss(t, t - shift, temperature).item()) < 1e-6


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kd_loss_positive_for_different_distributions(temperature):
    t = _logits(6)
    s = t.clone()
    s[0, 0] += 1.0  # one row differs other than by a shift
    assert kd_loss(s, t, temperature).item() > 0
    assert kd_loss(_logits(7), t, temperature).item() > 0


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distillation_loss_matches_loop(alpha):
    s, t = _logits(8), _logits(9)
    y = torch.tensor([0, 6, 3, 3, 1])
    temperature = 4.0
    expected = alpha * loop_ce(s, y) + (1 - alpha) * loop_kd(s, t, temperature)
    got = distillation_loss(s, t, y, temperature, alpha)
    assert_close(got, _scalar(expected), rtol=1e-4, atol=1e-6)


def test_distillation_loss_alpha_endpoints_are_pure_terms():
    s, t = _logits(10), _logits(11)
    y = torch.tensor([1, 2, 3, 4, 5])
    ce, kd = loop_ce(s, y), loop_kd(s, t, 2.0)
    assert abs(ce - kd) > 0.1  # so the two checks below cannot both pass by accident
    assert_close(distillation_loss(s, t, y, 2.0, 1.0), _scalar(ce), rtol=1e-4, atol=1e-6)
    assert_close(distillation_loss(s, t, y, 2.0, 0.0), _scalar(kd), rtol=1e-4, atol=1e-6)


# --- gradient scale: why T² ---------------------------------------------------------------

def _grad(s: torch.Tensor, t: torch.Tensor, temperature: float, t_squared: bool = True) -> torch.Tensor:
    x = s.clone().requires_grad_(True)
    kd_loss(x, t, temperature, t_squared=t_squared).backward()
    return x.grad


BATCH, CLASSES = 8, 10
S_FIXED, T_FIXED = _logits(20, (BATCH, CLASSES), 1.0), _logits(21, (BATCH, CLASSES), 1.0)


def test_gradient_norm_roughly_independent_of_temperature_with_t_squared():
    norms = [_grad(S_FIXED, T_FIXED, T).norm().item() for T in (4, 8, 16, 32, 64)]
    assert min(norms) > 0
    assert max(norms) / min(norms) < 2.0, norms


def test_gradient_converges_to_high_temperature_limit():
    zs = S_FIXED - S_FIXED.mean(dim=1, keepdim=True)
    zt = T_FIXED - T_FIXED.mean(dim=1, keepdim=True)
    limit = (zs - zt) / (CLASSES * BATCH)
    assert limit.abs().max() > 1e-3
    assert_close(_grad(S_FIXED, T_FIXED, 1000.0), limit, rtol=1e-2, atol=1e-4)


def test_gradient_at_low_temperature_is_not_the_limit():
    # sanity check that the limit comparison above is discriminating
    zs = S_FIXED - S_FIXED.mean(dim=1, keepdim=True)
    zt = T_FIXED - T_FIXED.mean(dim=1, keepdim=True)
    limit = (zs - zt) / (CLASSES * BATCH)
    with pytest.raises(AssertionError):
        assert_close(_grad(S_FIXED, T_FIXED, 0.5), limit, rtol=1e-2, atol=1e-4)


def test_without_t_squared_gradient_shrinks_with_temperature():
    low = _grad(S_FIXED, T_FIXED, 2.0, t_squared=False).norm().item()
    high = _grad(S_FIXED, T_FIXED, 16.0, t_squared=False).norm().item()
    assert high > 0
    assert low / high >= 50, (low, high)
    # while with T² the same two temperatures give comparable gradients
    low2 = _grad(S_FIXED, T_FIXED, 2.0).norm().item()
    high2 = _grad(S_FIXED, T_FIXED, 16.0).norm().item()
    assert 0.5 < low2 / high2 < 2.0


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "s_shape,t_shape",
    [((5, 7), (5, 6)), ((5, 7), (4, 7)), ((7,), (7,)), ((2, 5, 7), (2, 5, 7))],
)
def test_kd_loss_rejects_bad_shapes(s_shape, t_shape):
    with pytest.raises(ValueError, match="logits"):
        kd_loss(torch.zeros(s_shape), torch.zeros(t_shape), 2.0)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_kd_loss_rejects_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature)


def test_distillation_loss_rejects_bad_temperature_and_shapes():
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), y, 0.0, 0.5)
    with pytest.raises(ValueError, match="logits"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4), y, 1.0, 0.5)


@pytest.mark.parametrize("alpha", [-0.01, 1.01, 2.0, float("nan")])
def test_distillation_loss_rejects_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), 1.0, alpha)


# --- batch mean -------------------------------------------------------------------------------

def test_losses_are_batch_means():
    s, t = _logits(30), _logits(31)
    y = torch.tensor([0, 1, 2, 3, 4])
    s2, t2, y2 = torch.cat([s, s]), torch.cat([t, t]), torch.cat([y, y])
    assert_close(kd_loss(s2, t2, 3.0), kd_loss(s, t, 3.0), rtol=1e-5, atol=1e-7)
    assert_close(distillation_loss(s2, t2, y2, 3.0, 0.4), distillation_loss(s, t, y, 3.0, 0.4), rtol=1e-5, atol=1e-7)
    # a batch-sum would double; a mean over all elements would not match the loop either
    assert_close(kd_loss(s2, t2, 3.0), _scalar(loop_kd(s, t, 3.0)), rtol=1e-4, atol=1e-6)
