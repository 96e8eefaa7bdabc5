"""The feature and relation losses of `kdistill.losses.features` (FitNet, AT, PKT, RKD, SP, CRD's NCE)
against explicit python loops and closed forms."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch.testing import assert_close

from kdistill.losses import at_loss, fitnet_loss, nce_loss, pkt_loss, rkd_angle_loss, rkd_distance_loss, sp_loss


def _rand(seed: int, *shape: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


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
