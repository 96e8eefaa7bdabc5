"""DKD, DIST, LS-KD and the feature/relation losses against explicit python loops and closed forms."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch.testing import assert_close

from kdistill.losses import (at_loss, dist_loss, dkd_loss, fitnet_loss, kd_loss, ls_kd_loss, nce_loss, pkt_loss, rkd_angle_loss,
                             rkd_distance_loss, sp_loss)


def _rand(seed: int, *shape: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [v / temperature for v in row]
    top = max(scaled)
    exps = [math.exp(v - top) for v in scaled]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def _scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


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


# --- feature losses --------------------------------------------------------------------------

def test_fitnet_is_mean_squared_error_after_pooling_the_larger_map():
    s, t = _rand(18, 2, 3, 4, 4), _rand(19, 2, 3, 2, 2)
    pooled = [[[[statistics.fmean(s[b, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].flatten().tolist()) for j in range(2)]
                for i in range(2)] for c in range(3)] for b in range(2)]
    diffs = [(pooled[b][c][i][j] - t[b, c, i, j].item()) ** 2 for b in range(2) for c in range(3) for i in range(2) for j in range(2)]
    assert_close(fitnet_loss(s, t), _scalar(statistics.fmean(diffs)), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="hint shapes differ"):
        fitnet_loss(_rand(1, 2, 3, 4, 4), _rand(2, 2, 5, 4, 4))


def loop_attention(f: torch.Tensor, p: float) -> list[list[float]]:
    maps = []
    for sample in f.tolist():
        flat = [statistics.fmean(abs(ch[i][j]) ** p for ch in sample) for i in range(len(sample[0])) for j in range(len(sample[0][0]))]
        norm = math.sqrt(sum(v * v for v in flat))
        maps.append([v / norm for v in flat])
    return maps


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_at_loss_matches_explicit_loop(p):
    s, t = _rand(20, 3, 4, 5, 5), _rand(21, 3, 8, 5, 5)  # channel counts may differ
    a_s, a_t = loop_attention(s, p), loop_attention(t, p)
    expected = statistics.fmean((x - y) ** 2 for rs, rt in zip(a_s, a_t) for x, y in zip(rs, rt))
    assert expected > 1e-5
    assert_close(at_loss(s, t, p), _scalar(expected), rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="feature maps"):
        at_loss(_rand(1, 3, 4), _rand(2, 3, 4))


def test_pkt_matches_explicit_loop():
    s, t = _rand(22, 5, 6), _rand(23, 5, 9)

    def conditional(x: torch.Tensor) -> list[list[float]]:
        rows = [[v / math.sqrt(sum(w * w for w in r)) for v in r] for r in x.tolist()]
        sim = [[(sum(a * b for a, b in zip(ri, rj)) + 1) / 2 for rj in rows] for ri in rows]
        return [[v / sum(r) for v in r] for r in sim]

    qs, qt = conditional(s), conditional(t)
    expected = statistics.fmean(b * math.log((b + 1e-7) / (a + 1e-7)) for rs, rt in zip(qs, qt) for a, b in zip(rs, rt))
    assert abs(expected) > 1e-5
    assert_close(pkt_loss(s, t), _scalar(expected), rtol=1e-4, atol=1e-8)


def _smooth_l1(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def test_rkd_distance_matches_explicit_loop():
    s, t = _rand(24, 5, 4), _rand(25, 5, 7, scale=10.0)

    def normalised_distances(x: torch.Tensor) -> list[list[float]]:
        rows = x.tolist()
        d = [[math.dist(a, b) for b in rows] for a in rows]
        mean = statistics.fmean(d[i][j] for i in range(len(rows)) for j in range(len(rows)) if i != j)
        return [[v / mean for v in r] for r in d]

    ds, dt = normalised_distances(s), normalised_distances(t)
    expected = statistics.fmean(_smooth_l1(a, b) for rs, rt in zip(ds, dt) for a, b in zip(rs, rt))
    assert_close(rkd_distance_loss(s, t), _scalar(expected), rtol=1e-4, atol=1e-6)


def test_rkd_angle_matches_explicit_loop():
    s, t = _rand(26, 4, 3), _rand(27, 4, 5)

    def angles(x: torch.Tensor) -> list[float]:
        rows = x.tolist()
        out = []
        for j in range(len(rows)):
            for i in range(len(rows)):
                for k in range(len(rows)):
                    e_i = [a - b for a, b in zip(rows[i], rows[j])]
                    e_k = [a - b for a, b in zip(rows[k], rows[j])]
                    n_i, n_k = math.sqrt(sum(v * v for v in e_i)), math.sqrt(sum(v * v for v in e_k))
                    out.append(0.0 if n_i == 0 or n_k == 0 else sum(a * b for a, b in zip(e_i, e_k)) / (n_i * n_k))
        return out

    expected = statistics.fmean(_smooth_l1(a, b) for a, b in zip(angles(s), angles(t)))
    assert expected > 1e-4
    assert_close(rkd_angle_loss(s, t), _scalar(expected), rtol=1e-4, atol=1e-6)


def test_rkd_gradients_are_finite_with_duplicate_samples():
    s = torch.cat([_rand(28, 3, 4), _rand(28, 1, 4)])  # rows 0 and 3 are equal: a zero distance off the diagonal
    x = s.clone().requires_grad_(True)
    (rkd_distance_loss(x, _rand(29, 4, 6)) + rkd_angle_loss(x, _rand(29, 4, 6))).backward()
    assert torch.isfinite(x.grad).all()


def test_sp_matches_explicit_loop():
    s, t = _rand(30, 4, 2, 3, 3), _rand(31, 4, 5)

    def gram(x: torch.Tensor) -> list[list[float]]:
        rows = x.reshape(x.shape[0], -1).tolist()
        g = [[sum(a * b for a, b in zip(ri, rj)) for rj in rows] for ri in rows]
        return [[v / math.sqrt(sum(w * w for w in r)) for v in r] for r in g]

    gs, gt = gram(s), gram(t)
    expected = sum((a - b) ** 2 for rs, rt in zip(gs, gt) for a, b in zip(rs, rt)) / 16
    assert expected > 1e-4
    assert_close(sp_loss(s, t), _scalar(expected), rtol=1e-4, atol=1e-7)


def test_crd_nce_loss_matches_explicit_loop():
    scores = torch.rand(4, 6, generator=torch.Generator().manual_seed(32)) * 3
    n = 50
    m = 5 / n
    expected = -statistics.fmean(math.log(r[0] / (r[0] + m + 1e-7)) + sum(math.log(m / (x + m + 1e-7)) for x in r[1:])
                                 for r in scores.tolist())
    assert_close(nce_loss(scores, n), _scalar(expected), rtol=1e-5, atol=1e-6)


def test_feature_losses_stay_float32_under_bf16_autocast():
    s, t = _rand(40, 6, 5), _rand(41, 6, 7)
    reference = [rkd_distance_loss(s, t), rkd_angle_loss(s, t), sp_loss(s, t), pkt_loss(s, t)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = [rkd_distance_loss(s, t), rkd_angle_loss(s, t), sp_loss(s, t), pkt_loss(s, t)]
    for a, b in zip(reference, under):
        assert b.dtype == torch.float32 and torch.equal(a, b)
