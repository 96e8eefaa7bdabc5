"""The logit losses of `kdistill.losses.logits` against explicit python-float loops and closed forms
(no torch.nn.functional): kd_loss / distillation_loss, DKD, DIST and LS-KD."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch.testing import assert_close

from kdistill.losses import dist_loss, distillation_loss, dkd_loss, kd_loss, ls_kd_loss


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


def _rand(seed: int, *shape: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


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


# --- DKD -----------------------------------------------------------------------------------

def loop_dkd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, alpha: float, beta: float, temperature: float) -> float:
    """Zhao et al. 2022, eq. 1-5: binary (target, rest) KL + KL over the renormalised non-target classes."""
    total = 0.0
    for zs, zt, label in zip(s.tolist(), t.tolist(), y.tolist()):
        ps, pt = _softmax(zs, temperature), _softmax(zt, temperature)
        tckd = _kl([pt[label], 1 - pt[label]], [ps[label], 1 - ps[label]])
        rest = [c for c in range(len(zs)) if c != label]
        qs = [ps[c] / (1 - ps[label]) for c in rest]
        qt = [pt[c] / (1 - pt[label]) for c in rest]
        total += alpha * tckd + beta * _kl(qt, qs)
    return total / len(s) * temperature**2


@pytest.mark.parametrize("alpha, beta, temperature", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 2.0), (0.0, 1.0, 6.0)])
def test_dkd_matches_explicit_loop(alpha, beta, temperature):
    s, t = _rand(1, 6, 7), _rand(2, 6, 7)
    y = torch.tensor([0, 3, 6, 2, 2, 5])
    expected = loop_dkd(s, t, y, alpha, beta, temperature)
    assert expected > 1e-3
    assert_close(dkd_loss(s, t, y, alpha, beta, temperature), _scalar(expected), rtol=1e-4, atol=1e-6)


def test_dkd_reformulates_kd():
    """Paper eq. 7: KD = TCKD + (1 − p_t,target) · NCKD, per sample (here one sample at a time)."""
    s, t = _rand(3, 4, 9), _rand(4, 4, 9)
    y = torch.tensor([1, 8, 0, 4])
    temperature = 3.0
    for i in range(4):
        pt_target = torch.softmax(t[i] / temperature, dim=-1)[y[i]].item()
        got = dkd_loss(s[i:i + 1], t[i:i + 1], y[i:i + 1], 1.0, 1.0 - pt_target, temperature)
        assert_close(got, kd_loss(s[i:i + 1], t[i:i + 1], temperature), rtol=1e-4, atol=1e-6)


def test_dkd_gradient_matches_the_loop_by_finite_differences():
    s, t = _rand(5, 3, 5).double(), _rand(6, 3, 5).double()
    y = torch.tensor([4, 0, 2])
    x = s.clone().requires_grad_(True)
    dkd_loss(x, t, y, 1.0, 8.0, 4.0).backward()
    eps = 1e-5
    for i, c in [(0, 0), (1, 3), (2, 2), (2, 4)]:
        plus, minus = s.clone(), s.clone()
        plus[i, c] += eps
        minus[i, c] -= eps
        numeric = (loop_dkd(plus, t, y, 1.0, 8.0, 4.0) - loop_dkd(minus, t, y, 1.0, 8.0, 4.0)) / (2 * eps)
        assert math.isclose(x.grad[i, c].item(), numeric, rel_tol=1e-3, abs_tol=1e-6)


@pytest.mark.parametrize("shape", [(4, 2), (4, 1)])
def test_dkd_two_class_and_binary_are_finite_even_when_saturated(shape):
    s = torch.tensor([[100.0, -100.0], [-50.0, 50.0], [0.0, 0.0], [30.0, 1.0]])[:, :shape[1]]
    t = torch.tensor([[-100.0, 100.0], [50.0, -50.0], [0.0, 0.0], [1.0, 30.0]])[:, :shape[1]]
    y = torch.tensor([0, 1, 1, 0])
    x = s.clone().requires_grad_(True)
    loss = dkd_loss(x, t, y, 1.0, 8.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    if shape[1] == 2:  # NCKD over one class is 0, and TCKD is then the full 2-class KL
        assert_close(loss, kd_loss(s, t, 1.0), rtol=1e-5, atol=1e-5)
    else:  # a single logit z reads as the two logits [0, z]
        two = lambda z: torch.cat([torch.zeros_like(z), z], dim=1)  # noqa: E731
        assert_close(loss, dkd_loss(two(s), two(t), y, 1.0, 8.0, 1.0))


# --- DIST ----------------------------------------------------------------------------------

def _pearson(a: list[float], b: list[float]) -> float:
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    den = math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b))
    return num / den


def loop_dist(s: torch.Tensor, t: torch.Tensor, beta: float, gamma: float, temperature: float) -> float:
    ps = [_softmax(r, temperature) for r in s.tolist()]
    pt = [_softmax(r, temperature) for r in t.tolist()]
    inter = 1 - statistics.fmean(_pearson(a, b) for a, b in zip(ps, pt))
    columns = range(len(ps[0]))
    intra = 1 - statistics.fmean(_pearson([r[c] for r in ps], [r[c] for r in pt]) for c in columns)
    return temperature**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("beta, gamma, temperature", [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0), (1.0, 0.0, 2.0), (0.0, 3.0, 1.0)])
def test_dist_matches_explicit_loop(beta, gamma, temperature):
    s, t = _rand(7, 8, 6), _rand(8, 8, 6)
    expected = loop_dist(s, t, beta, gamma, temperature)
    assert expected > 1e-3
    assert_close(dist_loss(s, t, beta, gamma, temperature), _scalar(expected), rtol=1e-4, atol=1e-6)


def test_dist_is_zero_for_identical_and_finite_for_degenerate_inputs():
    t = _rand(9, 5, 4)
    assert abs(dist_loss(t, t.clone()).item()) < 1e-5
    for s, t in [(torch.zeros(1, 2), torch.zeros(1, 2)), (torch.zeros(3, 1), _rand(10, 3, 1)), (torch.zeros(4, 5), _rand(11, 4, 5))]:
        x = s.clone().requires_grad_(True)
        loss = dist_loss(x, t)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


# --- LS-KD ---------------------------------------------------------------------------------

def loop_ls_kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> float:
    def zscore(row: list[float]) -> list[float]:
        mean, std = statistics.fmean(row), statistics.stdev(row)  # Bessel-corrected, as the authors' torch.std
        return [(v - mean) / (std + 1e-7) for v in row]

    total = sum(_kl(_softmax(zscore(b), temperature), _softmax(zscore(a), temperature)) for a, b in zip(s.tolist(), t.tolist()))
    return total / len(s) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_ls_kd_matches_explicit_loop(temperature):
    s, t = _rand(12, 5, 8), _rand(13, 5, 8, scale=6.0)
    expected = loop_ls_kd(s, t, temperature)
    assert expected > 1e-3
    assert_close(ls_kd_loss(s, t, temperature), _scalar(expected), rtol=1e-4, atol=1e-6)


def test_ls_kd_ignores_logit_scale_and_shift_kd_does_not():
    s, t = _rand(14, 4, 6), _rand(15, 4, 6)
    moved = 3.0 * s + 7.0
    assert_close(ls_kd_loss(moved, t, 2.0), ls_kd_loss(s, t, 2.0), rtol=1e-4, atol=1e-6)
    assert not torch.isclose(kd_loss(moved, t, 2.0), kd_loss(s, t, 2.0), rtol=1e-2)


def test_ls_kd_equal_logits_and_binary_are_finite():
    for s, t in [(torch.zeros(2, 2), torch.ones(2, 2)), (_rand(16, 3, 1), _rand(17, 3, 1))]:
        x = s.clone().requires_grad_(True)
        loss = ls_kd_loss(x, t)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
